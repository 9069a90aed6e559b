//! Strict validation of client events against the reference's schemas (§2 session config,
//! §3 client events, §3.1 items, §3.2 response parameters), on the raw JSON before it is typed.
//!
//! The typed events of `switchboard-realtime` are deliberately lenient in nested objects (a
//! client must accept what newer servers send); the API is not lenient with what clients send.
//! Every nested object here is closed: an unknown field anywhere is `unknown_parameter`, a
//! missing one `missing_required_parameter`, a wrong JSON type `invalid_type`, a value outside
//! its set `invalid_value`, a number out of range `integer_below_min_value` (and the like), each
//! with `param` the full path (`session.audio.input.turn_detection.idle_timeout_ms`,
//! `item.content[0].type`), as the API's errors name it.

use serde_json::{Map, Value};
use switchboard_realtime::events::GA_VOICES;

/// Why a client event was rejected: the `error` fields (type is always `invalid_request_error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub code: &'static str,
    pub message: String,
    pub param: String,
}

type Check<T = ()> = Result<T, Invalid>;

/// The largest `input_audio_buffer.append` the API takes: 15 MiB of audio (§3, §7).
pub const MAX_APPEND_BYTES: usize = 15 * 1024 * 1024;

/// Transcription models the API knows (§2.2).
pub const TRANSCRIPTION_MODELS: [&str; 8] = [
    "whisper-1",
    "gpt-4o-transcribe",
    "gpt-4o-mini-transcribe",
    "gpt-4o-mini-transcribe-2025-12-15",
    "gpt-4o-transcribe-diarize",
    "gpt-realtime-whisper",
    "gpt-transcribe",
    "gpt-live-transcribe",
];

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a decimal",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn invalid_type(path: &str, expected: &str, got: &Value) -> Invalid {
    Invalid {
        code: "invalid_type",
        message: format!("Invalid type for '{path}': expected {expected}, but got {} instead.", kind_of(got)),
        param: path.to_owned(),
    }
}

fn invalid_value(path: &str, message: String) -> Invalid {
    Invalid { code: "invalid_value", message, param: path.to_owned() }
}

fn not_in(path: &str, got: &str, allowed: &[&str]) -> Invalid {
    let list = allowed.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(", ");
    invalid_value(path, format!("Invalid value: '{got}'. Supported values are: {list}."))
}

fn object<'a>(v: &'a Value, path: &str) -> Check<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| invalid_type(path, "an object", v))
}

/// The object at `path` may hold only `fields`.
fn closed<'a>(v: &'a Value, path: &str, fields: &[&str]) -> Check<&'a Map<String, Value>> {
    let map = object(v, path)?;
    if let Some(key) = map.keys().find(|k| !fields.contains(&k.as_str())) {
        let param = join(path, key);
        return Err(Invalid { code: "unknown_parameter", message: format!("Unknown parameter: '{param}'."), param });
    }
    Ok(map)
}

fn required<'a>(map: &'a Map<String, Value>, path: &str, key: &str) -> Check<&'a Value> {
    map.get(key).ok_or_else(|| {
        let param = join(path, key);
        Invalid {
            code: "missing_required_parameter",
            message: format!("Missing required parameter: '{param}'."),
            param,
        }
    })
}

fn string<'a>(v: &'a Value, path: &str) -> Check<&'a str> {
    v.as_str().ok_or_else(|| invalid_type(path, "a string", v))
}

fn boolean(v: &Value, path: &str) -> Check<bool> {
    v.as_bool().ok_or_else(|| invalid_type(path, "a boolean", v))
}

fn integer(v: &Value, path: &str, min: i64, max: i64) -> Check<i64> {
    let n = v.as_i64().ok_or_else(|| invalid_type(path, "an integer", v))?;
    if n < min {
        return Err(Invalid {
            code: "integer_below_min_value",
            message: format!(
                "Invalid '{path}': integer below minimum value. Expected a value >= {min}, but got {n} instead."
            ),
            param: path.to_owned(),
        });
    }
    if n > max {
        return Err(Invalid {
            code: "integer_above_max_value",
            message: format!(
                "Invalid '{path}': integer above maximum value. Expected a value <= {max}, but got {n} instead."
            ),
            param: path.to_owned(),
        });
    }
    Ok(n)
}

fn number(v: &Value, path: &str, min: f64, max: f64) -> Check<f64> {
    let n = v.as_f64().ok_or_else(|| invalid_type(path, "a number", v))?;
    if n < min {
        return Err(Invalid {
            code: "decimal_below_min_value",
            message: format!(
                "Invalid '{path}': decimal below minimum value. Expected a value >= {min}, but got {n} instead."
            ),
            param: path.to_owned(),
        });
    }
    if n > max {
        return Err(Invalid {
            code: "decimal_above_max_value",
            message: format!(
                "Invalid '{path}': decimal above maximum value. Expected a value <= {max}, but got {n} instead."
            ),
            param: path.to_owned(),
        });
    }
    Ok(n)
}

fn one_of<'a>(v: &'a Value, path: &str, allowed: &[&str]) -> Check<&'a str> {
    let s = string(v, path)?;
    if allowed.contains(&s) { Ok(s) } else { Err(not_in(path, s, allowed)) }
}

fn array<'a>(v: &'a Value, path: &str) -> Check<&'a Vec<Value>> {
    v.as_array().ok_or_else(|| invalid_type(path, "an array", v))
}

fn strings(v: &Value, path: &str) -> Check {
    for (i, s) in array(v, path)?.iter().enumerate() {
        string(s, &index(path, i))?;
    }
    Ok(())
}

/// Runs `check` on the field when present.
fn opt<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key)
}

fn event_id(map: &Map<String, Value>) -> Check {
    if let Some(v) = opt(map, "event_id") {
        string(v, "event_id")?;
    }
    Ok(())
}

/// Validates one client event (its `type` is already known to be a client event type).
pub fn client_event(event: &Value) -> Check {
    let kind = event.get("type").and_then(Value::as_str).unwrap_or_default();
    let fields: &[&str] = match kind {
        "session.update" => &["type", "event_id", "session"],
        "input_audio_buffer.append" => &["type", "event_id", "audio"],
        "conversation.item.create" => &["type", "event_id", "previous_item_id", "item"],
        "conversation.item.retrieve" | "conversation.item.delete" => &["type", "event_id", "item_id"],
        "conversation.item.truncate" => &["type", "event_id", "item_id", "content_index", "audio_end_ms"],
        "response.create" => &["type", "event_id", "response"],
        "response.cancel" => &["type", "event_id", "response_id"],
        _ => &["type", "event_id"],
    };
    let map = closed(event, "", fields)?;
    event_id(map)?;
    match kind {
        "session.update" => session(required(map, "", "session")?, "session"),
        "input_audio_buffer.append" => {
            let audio = string(required(map, "", "audio")?, "audio")?;
            // base64: 4 characters for 3 bytes.
            if audio.len() / 4 * 3 > MAX_APPEND_BYTES {
                return Err(invalid_value(
                    "audio",
                    format!("Invalid 'audio': an append carries at most {MAX_APPEND_BYTES} bytes of audio."),
                ));
            }
            Ok(())
        }
        "conversation.item.create" => {
            if let Some(prev) = opt(map, "previous_item_id") {
                string(prev, "previous_item_id")?;
            }
            item(required(map, "", "item")?, "item")
        }
        "conversation.item.retrieve" | "conversation.item.delete" => {
            string(required(map, "", "item_id")?, "item_id").map(|_| ())
        }
        "conversation.item.truncate" => {
            string(required(map, "", "item_id")?, "item_id")?;
            integer(required(map, "", "content_index")?, "content_index", 0, i64::from(u32::MAX))?;
            integer(required(map, "", "audio_end_ms")?, "audio_end_ms", 0, i64::from(u32::MAX))?;
            Ok(())
        }
        "response.create" => match opt(map, "response") {
            Some(r) => response_config(r, "response"),
            None => Ok(()),
        },
        "response.cancel" => match opt(map, "response_id") {
            Some(id) => string(id, "response_id").map(|_| ()),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

// ---- §2 session ----

const SESSION_FIELDS: [&str; 14] = [
    "type",
    "model",
    "output_modalities",
    "instructions",
    "audio",
    "tools",
    "tool_choice",
    "max_output_tokens",
    "truncation",
    "tracing",
    "prompt",
    "include",
    "reasoning",
    "parallel_tool_calls",
];

fn session(v: &Value, path: &str) -> Check {
    let map = object(v, path)?;
    // `object`, `id` and `expires_at` are the server's: sending them back is an unknown
    // parameter, as any other stray key.
    for read_only in ["object", "id", "expires_at"] {
        if map.contains_key(read_only) {
            let param = join(path, read_only);
            return Err(Invalid {
                code: "unknown_parameter",
                message: format!("Unknown parameter: '{param}'."),
                param,
            });
        }
    }
    closed(v, path, &SESSION_FIELDS)?;
    let kind = string(required(map, path, "type")?, &join(path, "type"))?;
    if kind == "transcription" {
        // A transcription session (§2, §2.3) configures its input audio only.
        closed(v, path, &["type", "audio", "include"])?;
        if let Some(audio) = opt(map, "audio") {
            closed(audio, &join(path, "audio"), &["input"])?;
        }
    } else if kind != "realtime" {
        return Err(not_in(&join(path, "type"), kind, &["realtime", "transcription"]));
    }
    if let Some(v) = opt(map, "model") {
        string(v, &join(path, "model"))?;
    }
    if let Some(v) = opt(map, "output_modalities") {
        output_modalities(v, &join(path, "output_modalities"))?;
    }
    if let Some(v) = opt(map, "instructions") {
        string(v, &join(path, "instructions"))?;
    }
    if let Some(v) = opt(map, "audio") {
        audio(v, &join(path, "audio"))?;
    }
    if let Some(v) = opt(map, "tools") {
        tools(v, &join(path, "tools"))?;
    }
    if let Some(v) = opt(map, "tool_choice") {
        tool_choice(v, &join(path, "tool_choice"))?;
    }
    if let Some(v) = opt(map, "max_output_tokens") {
        max_output_tokens(v, &join(path, "max_output_tokens"))?;
    }
    if let Some(v) = opt(map, "truncation") {
        truncation(v, &join(path, "truncation"))?;
    }
    if let Some(v) = opt(map, "tracing") {
        tracing_config(v, &join(path, "tracing"))?;
    }
    if let Some(v) = opt(map, "prompt") {
        prompt(v, &join(path, "prompt"))?;
    }
    if let Some(v) = opt(map, "include") {
        let p = join(path, "include");
        for (i, entry) in array(v, &p)?.iter().enumerate() {
            one_of(entry, &index(&p, i), &["item.input_audio_transcription.logprobs"])?;
        }
    }
    if let Some(v) = opt(map, "reasoning") {
        reasoning(v, &join(path, "reasoning"))?;
    }
    if let Some(v) = opt(map, "parallel_tool_calls") {
        boolean(v, &join(path, "parallel_tool_calls"))?;
    }
    Ok(())
}

/// `["audio"]` or `["text"]`: both at once is not allowed (§2.1).
fn output_modalities(v: &Value, path: &str) -> Check {
    let list = array(v, path)?;
    for (i, m) in list.iter().enumerate() {
        one_of(m, &index(path, i), &["audio", "text"])?;
    }
    if list.len() != 1 {
        return Err(invalid_value(path, format!("Invalid '{path}': expected exactly one of 'audio' or 'text'.")));
    }
    Ok(())
}

fn max_output_tokens(v: &Value, path: &str) -> Check {
    match v {
        Value::String(s) if s == "inf" => Ok(()),
        Value::String(s) => Err(not_in(path, s, &["inf"])),
        _ => integer(v, path, 1, 4096).map(|_| ()),
    }
}

fn truncation(v: &Value, path: &str) -> Check {
    if let Value::String(_) = v {
        return one_of(v, path, &["auto", "disabled"]).map(|_| ());
    }
    let map = closed(v, path, &["type", "retention_ratio", "token_limits"])?;
    one_of(required(map, path, "type")?, &join(path, "type"), &["retention_ratio"])?;
    number(required(map, path, "retention_ratio")?, &join(path, "retention_ratio"), 0.0, 1.0)?;
    if let Some(limits) = opt(map, "token_limits") {
        let p = join(path, "token_limits");
        let limits = closed(limits, &p, &["post_instructions"])?;
        if let Some(n) = opt(limits, "post_instructions") {
            integer(n, &join(&p, "post_instructions"), 0, i64::MAX)?;
        }
    }
    Ok(())
}

fn tracing_config(v: &Value, path: &str) -> Check {
    match v {
        Value::Null => Ok(()),
        Value::String(_) => one_of(v, path, &["auto"]).map(|_| ()),
        _ => {
            let map = closed(v, path, &["workflow_name", "group_id", "metadata"])?;
            for key in ["workflow_name", "group_id"] {
                if let Some(s) = opt(map, key) {
                    string(s, &join(path, key))?;
                }
            }
            if let Some(m) = opt(map, "metadata") {
                object(m, &join(path, "metadata"))?;
            }
            Ok(())
        }
    }
}

fn prompt(v: &Value, path: &str) -> Check {
    let map = closed(v, path, &["id", "version", "variables"])?;
    string(required(map, path, "id")?, &join(path, "id"))?;
    if let Some(s) = opt(map, "version") {
        string(s, &join(path, "version"))?;
    }
    if let Some(vars) = opt(map, "variables") {
        object(vars, &join(path, "variables"))?;
    }
    Ok(())
}

fn reasoning(v: &Value, path: &str) -> Check {
    let map = closed(v, path, &["effort"])?;
    if let Some(e) = opt(map, "effort") {
        one_of(e, &join(path, "effort"), &["minimal", "low", "medium", "high", "xhigh"])?;
    }
    Ok(())
}

// ---- §2.2 audio ----

fn audio(v: &Value, path: &str) -> Check {
    let map = closed(v, path, &["input", "output"])?;
    if let Some(input) = opt(map, "input") {
        audio_input(input, &join(path, "input"))?;
    }
    if let Some(output) = opt(map, "output") {
        audio_output(output, &join(path, "output"))?;
    }
    Ok(())
}

fn audio_format(v: &Value, path: &str) -> Check {
    let map = object(v, path)?;
    let kind = one_of(required(map, path, "type")?, &join(path, "type"), &["audio/pcm", "audio/pcmu", "audio/pcma"])?;
    if kind == "audio/pcm" {
        let map = closed(v, path, &["type", "rate"])?;
        if let Some(rate) = opt(map, "rate") {
            // 24000 is the only PCM rate (§2.2).
            let p = join(path, "rate");
            let n = rate.as_i64().ok_or_else(|| invalid_type(&p, "an integer", rate))?;
            if n != 24_000 {
                return Err(invalid_value(&p, format!("Invalid value: {n}. Supported values are: 24000.")));
            }
        }
    } else {
        closed(v, path, &["type"])?;
    }
    Ok(())
}

fn audio_input(v: &Value, path: &str) -> Check {
    let map = closed(v, path, &["format", "noise_reduction", "transcription", "turn_detection"])?;
    if let Some(f) = opt(map, "format") {
        audio_format(f, &join(path, "format"))?;
    }
    if let Some(nr) = opt(map, "noise_reduction")
        && !nr.is_null()
    {
        let p = join(path, "noise_reduction");
        let nr = closed(nr, &p, &["type", "strength"])?;
        one_of(required(nr, &p, "type")?, &join(&p, "type"), &["near_field", "far_field"])?;
        if let Some(s) = opt(nr, "strength") {
            number(s, &join(&p, "strength"), 0.0, f64::MAX)?;
        }
    }
    if let Some(t) = opt(map, "transcription")
        && !t.is_null()
    {
        transcription(t, &join(path, "transcription"))?;
    }
    if let Some(td) = opt(map, "turn_detection")
        && !td.is_null()
    {
        turn_detection(td, &join(path, "turn_detection"))?;
    }
    Ok(())
}

fn transcription(v: &Value, path: &str) -> Check {
    let map = closed(v, path, &["model", "language", "prompt", "languages", "keywords", "delay"])?;
    if let Some(m) = opt(map, "model") {
        one_of(m, &join(path, "model"), &TRANSCRIPTION_MODELS)?;
    }
    for key in ["language", "prompt"] {
        if let Some(s) = opt(map, key) {
            string(s, &join(path, key))?;
        }
    }
    for key in ["languages", "keywords"] {
        if let Some(list) = opt(map, key) {
            strings(list, &join(path, key))?;
        }
    }
    Ok(())
}

fn turn_detection(v: &Value, path: &str) -> Check {
    let map = object(v, path)?;
    let kind = one_of(required(map, path, "type")?, &join(path, "type"), &["server_vad", "semantic_vad"])?;
    if kind == "server_vad" {
        let map = closed(
            v,
            path,
            &[
                "type",
                "threshold",
                "prefix_padding_ms",
                "silence_duration_ms",
                "idle_timeout_ms",
                "create_response",
                "interrupt_response",
            ],
        )?;
        if let Some(t) = opt(map, "threshold") {
            number(t, &join(path, "threshold"), 0.0, 1.0)?;
        }
        for key in ["prefix_padding_ms", "silence_duration_ms"] {
            if let Some(ms) = opt(map, key) {
                integer(ms, &join(path, key), 0, i64::from(u32::MAX))?;
            }
        }
        // §2.2: server VAD only, 5000-30000, or null.
        if let Some(ms) = opt(map, "idle_timeout_ms")
            && !ms.is_null()
        {
            integer(ms, &join(path, "idle_timeout_ms"), 5_000, 30_000)?;
        }
        for key in ["create_response", "interrupt_response"] {
            if let Some(b) = opt(map, key) {
                boolean(b, &join(path, key))?;
            }
        }
    } else {
        // `idle_timeout_ms` is server VAD only: here it is an unknown parameter.
        let map = closed(v, path, &["type", "eagerness", "create_response", "interrupt_response"])?;
        if let Some(e) = opt(map, "eagerness") {
            one_of(e, &join(path, "eagerness"), &["low", "medium", "high", "auto"])?;
        }
        for key in ["create_response", "interrupt_response"] {
            if let Some(b) = opt(map, key) {
                boolean(b, &join(path, key))?;
            }
        }
    }
    Ok(())
}

fn audio_output(v: &Value, path: &str) -> Check {
    let map = closed(v, path, &["format", "voice", "speed"])?;
    if let Some(f) = opt(map, "format") {
        audio_format(f, &join(path, "format"))?;
    }
    if let Some(voice) = opt(map, "voice") {
        let p = join(path, "voice");
        if voice.is_object() {
            let custom = closed(voice, &p, &["id"])?;
            string(required(custom, &p, "id")?, &join(&p, "id"))?;
        } else {
            one_of(voice, &p, &GA_VOICES)?;
        }
    }
    if let Some(speed) = opt(map, "speed") {
        number(speed, &join(path, "speed"), 0.25, 1.5)?;
    }
    Ok(())
}

// ---- §2.4 tools ----

fn tools(v: &Value, path: &str) -> Check {
    let list = array(v, path)?;
    let mut names: Vec<&str> = Vec::new();
    let mut labels: Vec<&str> = Vec::new();
    for (i, tool) in list.iter().enumerate() {
        let p = index(path, i);
        let map = object(tool, &p)?;
        match one_of(required(map, &p, "type")?, &join(&p, "type"), &["function", "mcp"])? {
            "function" => {
                let map = closed(tool, &p, &["type", "name", "description", "parameters"])?;
                let name_path = join(&p, "name");
                let name = string(required(map, &p, "name")?, &name_path)?;
                let valid = !name.is_empty()
                    && name.len() <= 64
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if !valid {
                    return Err(invalid_value(
                        &name_path,
                        format!("Invalid '{name_path}': '{name}' does not match '^[a-zA-Z0-9_-]{{1,64}}$'."),
                    ));
                }
                if names.contains(&name) {
                    return Err(invalid_value(
                        &name_path,
                        format!("Invalid '{name_path}': duplicate tool name '{name}'."),
                    ));
                }
                names.push(name);
                if let Some(d) = opt(map, "description") {
                    string(d, &join(&p, "description"))?;
                }
                if let Some(params) = opt(map, "parameters") {
                    // A JSON Schema: any object (§2.4).
                    object(params, &join(&p, "parameters"))?;
                }
            }
            _ => {
                mcp_tool(tool, &p)?;
                let label = map.get("server_label").and_then(Value::as_str).unwrap_or_default();
                if labels.contains(&label) {
                    let label_path = join(&p, "server_label");
                    return Err(invalid_value(
                        &label_path,
                        format!("Invalid '{label_path}': duplicate server label '{label}'."),
                    ));
                }
                labels.push(label);
            }
        }
    }
    Ok(())
}

fn mcp_tool(v: &Value, path: &str) -> Check {
    let map = closed(
        v,
        path,
        &[
            "type",
            "server_label",
            "server_url",
            "connector_id",
            "tunnel_id",
            "allowed_tools",
            "require_approval",
            "headers",
            "authorization",
            "server_description",
            "allowed_callers",
            "defer_loading",
        ],
    )?;
    string(required(map, path, "server_label")?, &join(path, "server_label"))?;
    for key in ["server_url", "connector_id", "tunnel_id", "authorization", "server_description"] {
        if let Some(v) = opt(map, key) {
            string(v, &join(path, key))?;
        }
    }
    if let Some(v) = opt(map, "allowed_tools") {
        mcp_tool_filter(v, &join(path, "allowed_tools"))?;
    }
    if let Some(headers) = opt(map, "headers") {
        let headers_path = join(path, "headers");
        for (name, value) in object(headers, &headers_path)? {
            string(value, &join(&headers_path, name))?;
        }
    }
    // §2.4: "always" | "never" | {"always": filter, "never": filter}.
    if let Some(v) = opt(map, "require_approval") {
        let approval_path = join(path, "require_approval");
        if v.is_string() {
            one_of(v, &approval_path, &["always", "never"])?;
        } else {
            let modes = closed(v, &approval_path, &["always", "never"])?;
            for (mode, filter) in modes {
                mcp_tool_filter(filter, &join(&approval_path, mode))?;
            }
        }
    }
    let targets = ["server_url", "connector_id", "tunnel_id"].iter().filter(|k| map.contains_key(**k)).count();
    if targets != 1 {
        return Err(invalid_value(
            path,
            format!("Invalid '{path}': exactly one of 'server_url', 'connector_id' or 'tunnel_id' is required."),
        ));
    }
    Ok(())
}

/// An MCP tool filter: an array of names, or `{"tool_names": [...], "read_only": bool}` (§2.4).
fn mcp_tool_filter(v: &Value, path: &str) -> Check {
    if v.is_array() {
        return strings(v, path);
    }
    let map = closed(v, path, &["tool_names", "read_only"])?;
    if let Some(names) = opt(map, "tool_names") {
        strings(names, &join(path, "tool_names"))?;
    }
    if let Some(read_only) = opt(map, "read_only") {
        boolean(read_only, &join(path, "read_only"))?;
    }
    Ok(())
}

fn tool_choice(v: &Value, path: &str) -> Check {
    if let Value::String(_) = v {
        return one_of(v, path, &["auto", "none", "required"]).map(|_| ());
    }
    let map = object(v, path)?;
    match one_of(required(map, path, "type")?, &join(path, "type"), &["function", "mcp"])? {
        "function" => {
            let map = closed(v, path, &["type", "name"])?;
            string(required(map, path, "name")?, &join(path, "name"))?;
        }
        _ => {
            let map = closed(v, path, &["type", "server_label", "name"])?;
            string(required(map, path, "server_label")?, &join(path, "server_label"))?;
            if let Some(n) = opt(map, "name") {
                string(n, &join(path, "name"))?;
            }
        }
    }
    Ok(())
}

// ---- §3.1 items ----

const ITEM_TYPES: [&str; 4] = ["message", "function_call", "function_call_output", "mcp_approval_response"];

/// One item a client may create. Role and content part types must agree: user text is
/// `input_text`, system messages hold `input_text` only, assistant text is `output_text` (a
/// client cannot create assistant audio).
pub fn item(v: &Value, path: &str) -> Check {
    let map = object(v, path)?;
    let kind = one_of(required(map, path, "type")?, &join(path, "type"), &ITEM_TYPES)?;
    let common = ["type", "id", "object", "status"];
    let fields: Vec<&str> = match kind {
        "message" => [&common[..], &["role", "content"]].concat(),
        "function_call" => [&common[..], &["name", "arguments", "call_id"]].concat(),
        "function_call_output" => [&common[..], &["call_id", "output"]].concat(),
        _ => vec!["type", "id", "approval_request_id", "approve", "reason"],
    };
    let map = closed(v, path, &fields)?;
    if let Some(id) = opt(map, "id") {
        string(id, &join(path, "id"))?;
    }
    if let Some(o) = opt(map, "object") {
        one_of(o, &join(path, "object"), &["realtime.item"])?;
    }
    if let Some(s) = opt(map, "status") {
        one_of(s, &join(path, "status"), &["completed", "incomplete", "in_progress"])?;
    }
    match kind {
        "message" => message(map, path),
        "function_call" => {
            string(required(map, path, "name")?, &join(path, "name"))?;
            string(required(map, path, "arguments")?, &join(path, "arguments"))?;
            if let Some(c) = opt(map, "call_id") {
                string(c, &join(path, "call_id"))?;
            }
            Ok(())
        }
        "function_call_output" => {
            string(required(map, path, "call_id")?, &join(path, "call_id"))?;
            string(required(map, path, "output")?, &join(path, "output"))?;
            Ok(())
        }
        _ => {
            string(required(map, path, "id")?, &join(path, "id"))?;
            string(required(map, path, "approval_request_id")?, &join(path, "approval_request_id"))?;
            boolean(required(map, path, "approve")?, &join(path, "approve"))?;
            if let Some(r) = opt(map, "reason") {
                string(r, &join(path, "reason"))?;
            }
            Ok(())
        }
    }
}

fn message(map: &Map<String, Value>, path: &str) -> Check {
    let role = one_of(required(map, path, "role")?, &join(path, "role"), &["user", "assistant", "system"])?;
    let content_path = join(path, "content");
    let parts = array(required(map, path, "content")?, &content_path)?;
    let allowed: &[&str] = match role {
        "user" => &["input_text", "input_audio", "input_image"],
        "system" => &["input_text"],
        _ => &["output_text"],
    };
    for (i, part) in parts.iter().enumerate() {
        let p = index(&content_path, i);
        let part_map = object(part, &p)?;
        let type_path = join(&p, "type");
        let kind = string(required(part_map, &p, "type")?, &type_path)?;
        if !allowed.contains(&kind) {
            let message = if role == "assistant" && (kind == "output_audio" || kind == "audio") {
                "Assistant audio items cannot be created by the client.".to_owned()
            } else {
                let list = allowed.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(", ");
                format!("Invalid value: '{kind}'. Content of a '{role}' message must be one of: {list}.")
            };
            return Err(invalid_value(&type_path, message));
        }
        match kind {
            "input_text" | "output_text" => {
                let part_map = closed(part, &p, &["type", "text"])?;
                string(required(part_map, &p, "text")?, &join(&p, "text"))?;
            }
            "input_audio" => {
                let part_map = closed(part, &p, &["type", "audio", "transcript"])?;
                for key in ["audio", "transcript"] {
                    if let Some(s) = opt(part_map, key)
                        && !s.is_null()
                    {
                        string(s, &join(&p, key))?;
                    }
                }
            }
            _ => {
                let part_map = closed(part, &p, &["type", "image_url", "detail"])?;
                string(required(part_map, &p, "image_url")?, &join(&p, "image_url"))?;
                if let Some(d) = opt(part_map, "detail") {
                    one_of(d, &join(&p, "detail"), &["auto", "low", "high"])?;
                }
            }
        }
    }
    Ok(())
}

// ---- §3.2 response.create ----

fn response_config(v: &Value, path: &str) -> Check {
    let map = closed(
        v,
        path,
        &[
            "conversation",
            "input",
            "instructions",
            "output_modalities",
            "audio",
            "tools",
            "tool_choice",
            "max_output_tokens",
            "metadata",
            "prompt",
            "reasoning",
            "parallel_tool_calls",
        ],
    )?;
    if let Some(c) = opt(map, "conversation") {
        one_of(c, &join(path, "conversation"), &["auto", "none"])?;
    }
    if let Some(input) = opt(map, "input") {
        let p = join(path, "input");
        for (i, entry) in array(input, &p)?.iter().enumerate() {
            let ep = index(&p, i);
            if entry.get("type").and_then(Value::as_str) == Some("item_reference") {
                let r = closed(entry, &ep, &["type", "id"])?;
                string(required(r, &ep, "id")?, &join(&ep, "id"))?;
            } else {
                item(entry, &ep)?;
            }
        }
    }
    if let Some(s) = opt(map, "instructions") {
        string(s, &join(path, "instructions"))?;
    }
    if let Some(m) = opt(map, "output_modalities") {
        output_modalities(m, &join(path, "output_modalities"))?;
    }
    if let Some(a) = opt(map, "audio") {
        let p = join(path, "audio");
        let a = closed(a, &p, &["output"])?;
        if let Some(out) = opt(a, "output") {
            let op = join(&p, "output");
            // Per response only format and voice (§3.2); speed is the session's.
            closed(out, &op, &["format", "voice"])?;
            audio_output(out, &op)?;
        }
    }
    if let Some(t) = opt(map, "tools") {
        tools(t, &join(path, "tools"))?;
    }
    if let Some(t) = opt(map, "tool_choice") {
        tool_choice(t, &join(path, "tool_choice"))?;
    }
    if let Some(m) = opt(map, "max_output_tokens") {
        max_output_tokens(m, &join(path, "max_output_tokens"))?;
    }
    if let Some(m) = opt(map, "metadata")
        && !m.is_null()
    {
        metadata(m, &join(path, "metadata"))?;
    }
    if let Some(p) = opt(map, "prompt") {
        prompt(p, &join(path, "prompt"))?;
    }
    if let Some(r) = opt(map, "reasoning") {
        reasoning(r, &join(path, "reasoning"))?;
    }
    if let Some(b) = opt(map, "parallel_tool_calls") {
        boolean(b, &join(path, "parallel_tool_calls"))?;
    }
    Ok(())
}

/// Up to 16 string pairs, keys at most 64 characters, values at most 512 (§3.2, §7).
fn metadata(v: &Value, path: &str) -> Check {
    let map = object(v, path)?;
    if map.len() > 16 {
        return Err(invalid_value(path, format!("Invalid '{path}': at most 16 pairs, got {}.", map.len())));
    }
    for (key, value) in map {
        let p = join(path, key);
        if key.chars().count() > 64 {
            return Err(invalid_value(&p, format!("Invalid '{path}': key '{key}' is longer than 64 characters.")));
        }
        let s = string(value, &p)?;
        if s.chars().count() > 512 {
            return Err(invalid_value(&p, format!("Invalid '{p}': value is longer than 512 characters.")));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rejected(event: Value) -> Invalid {
        client_event(&event).expect_err(&format!("should be rejected: {event}"))
    }

    #[test]
    fn valid_events_pass() {
        for event in [
            json!({"type":"session.update","event_id":"e","session":{"type":"realtime","model":"gpt-realtime",
                "output_modalities":["audio"],"instructions":"Be brief.",
                "audio":{"input":{"format":{"type":"audio/pcmu"},"noise_reduction":{"type":"near_field"},
                    "transcription":{"model":"gpt-4o-mini-transcribe","language":"en"},
                    "turn_detection":{"type":"server_vad","threshold":0.5,"prefix_padding_ms":300,
                        "silence_duration_ms":500,"idle_timeout_ms":10000,"create_response":true,"interrupt_response":true}},
                    "output":{"format":{"type":"audio/pcm","rate":24000},"voice":"marin","speed":1.0}},
                "tools":[{"type":"function","name":"lookup_order","description":"d",
                    "parameters":{"type":"object","properties":{"order_id":{"type":"string"}},"required":["order_id"]}},
                    {"type":"mcp","server_label":"crm","server_url":"https://crm.example.com/mcp",
                     "allowed_tools":["get_customer"],"require_approval":"never","headers":{"Authorization":"Bearer x"}}],
                "tool_choice":"auto","max_output_tokens":"inf",
                "truncation":{"type":"retention_ratio","retention_ratio":0.8},"tracing":"auto",
                "include":["item.input_audio_transcription.logprobs"]}}),
            json!({"type":"session.update","session":{"type":"realtime","tools":[
                {"type":"mcp","server_label":"crm","server_url":"https://crm.example.com/mcp",
                 "allowed_tools":{"tool_names":["find"],"read_only":true},
                 "require_approval":{"always":{"tool_names":["delete"]},"never":{"read_only":true}}}]}}),
            json!({"type":"session.update","session":{"type":"realtime","audio":{"input":{"turn_detection":null,
                "transcription":null,"noise_reduction":null}}}}),
            json!({"type":"conversation.item.create","item":{"type":"message","role":"user",
                "content":[{"type":"input_text","text":"The caller pressed 5."}]}}),
            json!({"type":"conversation.item.create","previous_item_id":"root","item":{"type":"message","role":"assistant",
                "content":[{"type":"output_text","text":"Hello."}]}}),
            json!({"type":"conversation.item.create","item":{"type":"function_call","name":"f","arguments":"{}","call_id":"c"}}),
            json!({"type":"response.create","response":{"instructions":"x","conversation":"none",
                "metadata":{"purpose":"apology"},"input":[{"type":"item_reference","id":"item_1"}]}}),
            json!({"type":"conversation.item.truncate","item_id":"i","content_index":0,"audio_end_ms":120}),
            json!({"type":"input_audio_buffer.commit","event_id":"x"}),
        ] {
            assert_eq!(client_event(&event), Ok(()), "{event}");
        }
    }

    #[test]
    fn nested_unknown_fields_are_named_by_their_path() {
        let cases = [
            (
                json!({"type":"session.update","session":{"type":"realtime","audio":{"input":{"format":{"type":"audio/pcmu"},"gain":2}}}}),
                "session.audio.input.gain",
            ),
            (
                json!({"type":"session.update","session":{"type":"realtime","audio":{"input":{"turn_detection":{"type":"server_vad","mode":"x"}}}}}),
                "session.audio.input.turn_detection.mode",
            ),
            (
                json!({"type":"session.update","session":{"type":"realtime","audio":{"input":{"turn_detection":{"type":"semantic_vad","idle_timeout_ms":6000}}}}}),
                "session.audio.input.turn_detection.idle_timeout_ms",
            ),
            (
                json!({"type":"session.update","session":{"type":"realtime","audio":{"input":{"format":{"type":"audio/pcmu","rate":8000}}}}}),
                "session.audio.input.format.rate",
            ),
            (
                json!({"type":"session.update","session":{"type":"realtime","tools":[{"type":"function","name":"f","strict":true}]}}),
                "session.tools[0].strict",
            ),
            (
                json!({"type":"session.update","session":{"type":"realtime","audio":{"input":{"transcription":{"model":"whisper-1","temperature":0}}}}}),
                "session.audio.input.transcription.temperature",
            ),
            (json!({"type":"session.update","session":{"type":"realtime","temperature":0.8}}), "session.temperature"),
            (json!({"type":"session.update","session":{"type":"realtime","expires_at":1}}), "session.expires_at"),
            (
                json!({"type":"conversation.item.create","item":{"type":"message","role":"user","content":[{"type":"input_text","text":"x","lang":"en"}]}}),
                "item.content[0].lang",
            ),
            (
                json!({"type":"conversation.item.create","item":{"type":"function_call_output","call_id":"c","output":"o","name":"f"}}),
                "item.name",
            ),
            (json!({"type":"response.create","response":{"temperature":1}}), "response.temperature"),
            (
                json!({"type":"response.create","response":{"audio":{"output":{"speed":1.0}}}}),
                "response.audio.output.speed",
            ),
            (json!({"type":"input_audio_buffer.clear","bogus":1}), "bogus"),
        ];
        for (event, param) in cases {
            let e = rejected(event.clone());
            assert_eq!((e.code, e.param.as_str()), ("unknown_parameter", param), "{event}");
            assert_eq!(e.message, format!("Unknown parameter: '{param}'."));
        }
    }

    #[test]
    fn role_and_part_types_must_agree() {
        let cases = [
            ("assistant", "input_text"),
            ("assistant", "output_audio"),
            ("user", "output_text"),
            ("system", "input_audio"),
            ("system", "output_text"),
            ("user", "text"),
        ];
        for (role, part) in cases {
            let valid = if role == "assistant" { "output_text" } else { "input_text" };
            let event = json!({"type":"conversation.item.create","item":{"type":"message","role":role,
                "content":[{"type":valid,"text":"ok"},{"type":part,"text":"x"}]}});
            let e = rejected(event);
            assert_eq!((e.code, e.param.as_str()), ("invalid_value", "item.content[1].type"), "{role} {part}");
        }
        let e =
            rejected(json!({"type":"conversation.item.create","item":{"type":"message","role":"robot","content":[]}}));
        assert_eq!(e.param, "item.role");
        let e = rejected(json!({"type":"conversation.item.create","item":{"type":"mcp_call","id":"x"}}));
        assert_eq!(e.param, "item.type");
    }

    #[test]
    fn types_ranges_and_required_fields() {
        let cases = [
            (
                json!({"type":"session.update","session":{"instructions":"x"}}),
                "missing_required_parameter",
                "session.type",
            ),
            (
                json!({"type":"session.update","session":{"type":"realtime","instructions":5}}),
                "invalid_type",
                "session.instructions",
            ),
            (
                json!({"type":"session.update","session":{"type":"realtime","audio":{"input":{"turn_detection":{"type":"server_vad","idle_timeout_ms":4000}}}}}),
                "integer_below_min_value",
                "session.audio.input.turn_detection.idle_timeout_ms",
            ),
            (
                json!({"type":"session.update","session":{"type":"realtime","audio":{"input":{"turn_detection":{"type":"server_vad","idle_timeout_ms":30001}}}}}),
                "integer_above_max_value",
                "session.audio.input.turn_detection.idle_timeout_ms",
            ),
            (
                json!({"type":"session.update","session":{"type":"realtime","audio":{"input":{"turn_detection":{"type":"server_vad","threshold":1.5}}}}}),
                "decimal_above_max_value",
                "session.audio.input.turn_detection.threshold",
            ),
            (
                json!({"type":"session.update","session":{"type":"realtime","audio":{"output":{"speed":2.0}}}}),
                "decimal_above_max_value",
                "session.audio.output.speed",
            ),
            (
                json!({"type":"session.update","session":{"type":"realtime","audio":{"input":{"transcription":{"model":"gpt-9-transcribe"}}}}}),
                "invalid_value",
                "session.audio.input.transcription.model",
            ),
            (
                json!({"type":"session.update","session":{"type":"realtime","max_output_tokens":5000}}),
                "integer_above_max_value",
                "session.max_output_tokens",
            ),
            (
                json!({"type":"session.update","session":{"type":"realtime","tools":[{"type":"function","name":"f"},{"type":"function","name":"f"}]}}),
                "invalid_value",
                "session.tools[1].name",
            ),
            (
                json!({"type":"session.update","session":{"type":"realtime","tools":[{"type":"function","name":"end call"}]}}),
                "invalid_value",
                "session.tools[0].name",
            ),
            (
                json!({"type":"session.update","session":{"type":"realtime","tools":[
                    {"type":"mcp","server_label":"a","server_url":"https://a.example","require_approval":"sometimes"}]}}),
                "invalid_value",
                "session.tools[0].require_approval",
            ),
            (
                json!({"type":"session.update","session":{"type":"realtime","tools":[
                    {"type":"mcp","server_label":"a","server_url":"https://a.example","require_approval":{"maybe":{}}}]}}),
                "unknown_parameter",
                "session.tools[0].require_approval.maybe",
            ),
            (
                json!({"type":"session.update","session":{"type":"realtime","tools":[
                    {"type":"mcp","server_label":"a","server_url":"https://a.example","allowed_tools":[1]}]}}),
                "invalid_type",
                "session.tools[0].allowed_tools[0]",
            ),
            (
                json!({"type":"session.update","session":{"type":"realtime","tools":[
                    {"type":"mcp","server_label":"a","server_url":"https://a.example","headers":{"X":1}}]}}),
                "invalid_type",
                "session.tools[0].headers.X",
            ),
            (
                json!({"type":"session.update","session":{"type":"realtime","tools":[
                    {"type":"mcp","server_label":"a","server_url":"https://a.example"},
                    {"type":"mcp","server_label":"a","server_url":"https://b.example"}]}}),
                "invalid_value",
                "session.tools[1].server_label",
            ),
            (
                json!({"type":"session.update","session":{"type":"realtime","tool_choice":"sometimes"}}),
                "invalid_value",
                "session.tool_choice",
            ),
            (
                json!({"type":"conversation.item.create","item":{"type":"function_call_output","call_id":"c"}}),
                "missing_required_parameter",
                "item.output",
            ),
            (
                json!({"type":"conversation.item.create","item":{"type":"function_call_output","call_id":"c","output":{"ok":true}}}),
                "invalid_type",
                "item.output",
            ),
            (
                json!({"type":"conversation.item.truncate","item_id":"i","content_index":0,"audio_end_ms":-1}),
                "integer_below_min_value",
                "audio_end_ms",
            ),
            (
                json!({"type":"response.create","response":{"conversation":"other"}}),
                "invalid_value",
                "response.conversation",
            ),
            (json!({"type":"conversation.item.retrieve"}), "missing_required_parameter", "item_id"),
        ];
        for (event, code, param) in cases {
            let e = rejected(event.clone());
            assert_eq!((e.code, e.param.as_str()), (code, param), "{event}: {}", e.message);
        }
    }

    #[test]
    fn metadata_limits() {
        let many: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
        let e = rejected(json!({"type":"response.create","response":{"metadata":many}}));
        assert_eq!(e.param, "response.metadata");
        let e = rejected(json!({"type":"response.create","response":{"metadata":{"k":"v".repeat(513)}}}));
        assert_eq!(e.param, "response.metadata.k");
        let e = rejected(json!({"type":"response.create","response":{"metadata":{"k":1}}}));
        assert_eq!((e.code, e.param.as_str()), ("invalid_type", "response.metadata.k"));
    }
}
