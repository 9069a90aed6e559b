//! Conversation decisions of the call core on a virtual clock (issue 8, talk).
