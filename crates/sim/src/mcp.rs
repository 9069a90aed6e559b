//! MCP servers, simulated (reference §2.4, §4.5, §5 "MCP flow"): the server side of an `mcp`
//! tool is OpenAI's, so the simulator only plays its events.
//!
//! - A `session.update` that declares an `mcp` tool gets the tool listing:
//!   `mcp_list_tools.in_progress`, `conversation.item.added` / `.done` with the
//!   `mcp_list_tools` item (`server_label`, `tools`), `mcp_list_tools.completed`.
//! - The `mcp_call` control makes the next response call a tool of a declared server:
//!   `response.output_item.added` (an `mcp_call` item), `response.mcp_call_arguments.delta` /
//!   `.done`, `response.mcp_call.in_progress` / `.completed`, `response.output_item.done` with
//!   the item's `output`, then the response's spoken answer.
//! - When the server requires approval for the tool (`require_approval` `"always"`, or the
//!   object form naming it under `always`), that response only carries an
//!   `mcp_approval_request` item and ends; an `mcp_approval_response` naming it (approve: the
//!   next response runs the call; deny: it does not) must follow. One naming an unknown
//!   request is an error.

use serde_json::{Map, Value, json};

/// `POST /_sim/control/mcp_call`: the next response calls `name` on MCP server `server`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpCallScript {
    pub server: String,
    pub name: String,
    /// A JSON text.
    pub arguments: String,
}

/// The tools a simulated server lists: its `allowed_tools` when given as names, else `search`.
pub fn listed_tools(tool: &Map<String, Value>) -> Vec<String> {
    let names = match tool.get("allowed_tools") {
        Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(Value::Object(filter)) => filter
            .get("tool_names")
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    if names.is_empty() { vec!["search".to_owned()] } else { names }
}

/// Whether the server's `require_approval` asks for an approval before calling `name`.
pub fn requires_approval(tool: &Map<String, Value>, name: &str) -> bool {
    match tool.get("require_approval") {
        Some(Value::String(mode)) => mode == "always",
        Some(Value::Object(modes)) => modes
            .get("always")
            .and_then(|always| always.get("tool_names"))
            .and_then(Value::as_array)
            .is_some_and(|names| names.iter().any(|n| n.as_str() == Some(name))),
        // The API's default is to ask.
        None => true,
        Some(_) => false,
    }
}

/// The events of one server's tool listing, after `session.updated`.
pub fn list_tools_events(mut event_id: impl FnMut() -> String, item_id: &str, tool: &Map<String, Value>) -> Vec<Value> {
    let label = tool.get("server_label").cloned().unwrap_or(Value::Null);
    let tools: Vec<Value> = listed_tools(tool)
        .into_iter()
        .map(|name| {
            json!({"name": name, "description": format!("Simulated MCP tool {name}."),
                   "input_schema": {"type": "object", "properties": {}}})
        })
        .collect();
    let empty = json!({"id": item_id, "object": "realtime.item", "type": "mcp_list_tools",
                       "server_label": label, "tools": []});
    let full = json!({"id": item_id, "object": "realtime.item", "type": "mcp_list_tools",
                      "server_label": label, "tools": tools});
    vec![
        json!({"type": "mcp_list_tools.in_progress", "event_id": event_id(), "item_id": item_id}),
        json!({"type": "conversation.item.added", "event_id": event_id(), "previous_item_id": null, "item": empty}),
        json!({"type": "mcp_list_tools.completed", "event_id": event_id(), "item_id": item_id}),
        json!({"type": "conversation.item.done", "event_id": event_id(), "previous_item_id": null, "item": full}),
    ]
}

/// An `mcp_approval_request` as the response's only output item.
pub fn approval_request_events(
    mut event_id: impl FnMut() -> String,
    response_id: &str,
    item_id: &str,
    script: &McpCallScript,
) -> Vec<Value> {
    let item = json!({"id": item_id, "object": "realtime.item", "type": "mcp_approval_request",
                      "server_label": script.server, "name": script.name, "arguments": script.arguments});
    vec![
        json!({"type": "response.output_item.added", "event_id": event_id(), "response_id": response_id,
               "output_index": 0, "item": item}),
        json!({"type": "response.output_item.done", "event_id": event_id(), "response_id": response_id,
               "output_index": 0, "item": item}),
    ]
}

/// The events of one MCP call run by the server, as the response's first output item.
pub fn call_events(
    mut event_id: impl FnMut() -> String,
    response_id: &str,
    item_id: &str,
    script: &McpCallScript,
    approval_request_id: Option<&str>,
) -> Vec<Value> {
    let mut item = json!({"id": item_id, "object": "realtime.item", "type": "mcp_call", "server_label": script.server,
                          "name": script.name, "arguments": ""});
    if let Some(id) = approval_request_id {
        item["approval_request_id"] = json!(id);
    }
    let mut done = item.clone();
    done["arguments"] = json!(script.arguments);
    done["output"] = json!(format!("{{\"result\":\"simulated {} result\"}}", script.name));
    let at = |event: &str, id: String| json!({"type": event, "event_id": id, "response_id": response_id, "item_id": item_id, "output_index": 0});
    let mut delta = at("response.mcp_call_arguments.delta", event_id());
    delta["delta"] = json!(script.arguments);
    let mut arguments_done = at("response.mcp_call_arguments.done", event_id());
    arguments_done["arguments"] = json!(script.arguments);
    vec![
        json!({"type": "response.output_item.added", "event_id": event_id(), "response_id": response_id,
               "output_index": 0, "item": item}),
        delta,
        arguments_done,
        json!({"type": "response.mcp_call.in_progress", "event_id": event_id(), "item_id": item_id, "output_index": 0}),
        json!({"type": "response.mcp_call.completed", "event_id": event_id(), "item_id": item_id, "output_index": 0}),
        json!({"type": "response.output_item.done", "event_id": event_id(), "response_id": response_id,
               "output_index": 0, "item": done}),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn tool(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn approval_follows_require_approval() {
        assert!(!requires_approval(&tool(json!({"require_approval": "never"})), "search"));
        assert!(requires_approval(&tool(json!({"require_approval": "always"})), "search"));
        assert!(requires_approval(&tool(json!({})), "search"), "the API asks by default");
        let object = tool(
            json!({"require_approval": {"always": {"tool_names": ["delete"]}, "never": {"tool_names": ["search"]}}}),
        );
        assert!(requires_approval(&object, "delete"));
        assert!(!requires_approval(&object, "search"));
    }

    #[test]
    fn the_listing_names_the_allowed_tools() {
        let mut n = 0;
        let events = list_tools_events(
            || {
                n += 1;
                format!("e{n}")
            },
            "item_1",
            &tool(json!({"server_label": "shop", "allowed_tools": ["lookup", "buy"]})),
        );
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "mcp_list_tools.in_progress",
                "conversation.item.added",
                "mcp_list_tools.completed",
                "conversation.item.done"
            ]
        );
        assert_eq!(events[3]["item"]["tools"][1]["name"], "buy");
        assert_eq!(listed_tools(&tool(json!({"server_label": "x"}))), ["search"]);
    }
}
