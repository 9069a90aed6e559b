//! REFER received in a dialog (RFC 3515): taken only where the application asked for it
//! ([`Core::accept_refers`], e.g. `switchboard test-call`, which records an agent's transfer);
//! the gateway's own dialogs keep answering 501 Not Implemented.

use std::time::Instant;

use super::*;

/// At most this many dialogs take REFERs at once (ended ones are dropped when one is added).
const MAX_REFER_DIALOGS: usize = 65_536;

impl Core {
    /// A REFER in `dialog` is answered 202 and handed to the application from now on.
    pub fn accept_refers(&mut self, dialog: DialogId) {
        if self.refer_dialogs.len() >= MAX_REFER_DIALOGS / 2 {
            let dialogs = &self.dialogs;
            self.refer_dialogs.retain(|d| dialogs.contains_key(d));
        }
        if self.refer_dialogs.len() < MAX_REFER_DIALOGS && self.dialogs.contains_key(&dialog) {
            self.refer_dialogs.insert(dialog);
        }
    }

    /// RFC 3515 §2.4.2: 202 Accepted for a REFER with exactly one Refer-To (400 otherwise,
    /// §2.4.1); 501 where the application takes none.
    pub(super) fn handle_refer(
        &mut self,
        now: Instant,
        origin: Origin,
        request: Message,
        key: TxKey,
        dialog_id: DialogId,
    ) {
        if !self.refer_dialogs.contains(&dialog_id) {
            self.respond(now, key, &origin, &request, 501, None, &[]);
            return;
        }
        let refer_to: Vec<String> = request.header_values("Refer-To").map(|v| v.trim().to_owned()).collect();
        let [refer_to] = refer_to.as_slice() else {
            self.respond(now, key, &origin, &request, 400, Some("Bad Request (one Refer-To needed)"), &[]);
            return;
        };
        let refer_to = refer_to.clone();
        self.respond(now, key, &origin, &request, 202, Some("Accepted"), &[]);
        self.events.push_back(CoreEvent::Dialog { dialog: dialog_id, notice: DialogEvent::Refer { refer_to } });
    }
}
