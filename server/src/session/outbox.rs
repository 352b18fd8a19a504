//! What a session still has to tell its agent about commands: acks of stored updates, offers
//! and cancels. Filled by the command engine, emptied by the session's loop.
//!
//! Allocated on first use and freed once emptied, so an idle session pays only for an empty
//! slot (see [`super::Session`]): commands cost memory only while they exist. Offers and
//! cancels keep their order (an offer is never overtaken by its own cancel); acks are merged
//! per invocation into one `CommandAck`, which may go first since it answers the agent, not a
//! command.

use std::collections::VecDeque;

use crate::command::record::Offer;

/// Most acks one `CommandAck` carries (about 40 bytes each: far below any message limit).
pub const MAX_ACKS_PER_MESSAGE: usize = 1024;

/// One message for the agent.
#[derive(Clone, Debug, PartialEq)]
pub enum CommandMessage {
    /// (invocation id, highest durable seq) pairs.
    Acks(Vec<(String, u64)>),
    Offer(Box<Offer>),
    Cancel(String),
}

/// The messages waiting.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    acks: Vec<(String, u64)>,
    /// Offers and cancels, in the order they were made.
    steps: VecDeque<CommandMessage>,
}

// === impl Outbox ===

impl Outbox {
    /// Adds an ack, merged with one already waiting for the same invocation.
    pub(super) fn ack(&mut self, id: String, seq: u64) {
        match self.acks.iter_mut().find(|(waiting, _)| *waiting == id) {
            Some((_, waiting)) => *waiting = (*waiting).max(seq),
            None => self.acks.push((id, seq)),
        }
    }

    pub(super) fn offer(&mut self, offer: Offer) {
        self.steps.push_back(CommandMessage::Offer(Box::new(offer)));
    }

    pub(super) fn cancel(&mut self, id: String) {
        self.steps.push_back(CommandMessage::Cancel(id));
    }

    /// The next message: acks first (at most [`MAX_ACKS_PER_MESSAGE`] at a time), then offers
    /// and cancels in order.
    pub(super) fn next(&mut self) -> Option<CommandMessage> {
        if !self.acks.is_empty() {
            let rest = self
                .acks
                .split_off(self.acks.len().min(MAX_ACKS_PER_MESSAGE));
            return Some(CommandMessage::Acks(std::mem::replace(
                &mut self.acks,
                rest,
            )));
        }
        self.steps.pop_front()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.steps.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::command::record::CommandSpec;
    use crate::domain::{CommandId, Time};

    fn offer(id: &str) -> Offer {
        Offer {
            invocation_id: id.to_owned(),
            command_id: CommandId::new("c"),
            spec: Arc::new(CommandSpec::Noop),
            timeout: Duration::from_secs(1),
            deliver_by: Time::EPOCH,
            output_limit: 0,
            kill_grace: Duration::from_secs(1),
        }
    }

    #[test]
    fn acks_merge_and_go_first_while_offers_and_cancels_keep_their_order() {
        let mut outbox = Outbox::default();
        outbox.offer(offer("c-1"));
        outbox.cancel("c-1".to_owned());
        outbox.ack("c-2".to_owned(), 3);
        outbox.ack("c-2".to_owned(), 2);
        outbox.ack("c-3".to_owned(), 1);
        assert_eq!(
            outbox.next(),
            Some(CommandMessage::Acks(vec![
                ("c-2".to_owned(), 3),
                ("c-3".to_owned(), 1)
            ]))
        );
        assert_eq!(
            outbox.next(),
            Some(CommandMessage::Offer(Box::new(offer("c-1"))))
        );
        assert_eq!(
            outbox.next(),
            Some(CommandMessage::Cancel("c-1".to_owned()))
        );
        assert!(outbox.is_empty());
        assert_eq!(outbox.next(), None);
    }

    #[test]
    fn acks_are_cut_into_bounded_messages() {
        let mut outbox = Outbox::default();
        for n in 0..MAX_ACKS_PER_MESSAGE + 5 {
            outbox.ack(format!("c-{n}"), 1);
        }
        let Some(CommandMessage::Acks(first)) = outbox.next() else {
            panic!("acks first");
        };
        assert_eq!(first.len(), MAX_ACKS_PER_MESSAGE);
        assert_eq!(first[0].0, "c-0");
        let Some(CommandMessage::Acks(rest)) = outbox.next() else {
            panic!("the rest");
        };
        assert_eq!(rest.len(), 5);
    }
}
