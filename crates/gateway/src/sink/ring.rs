//! The last N events in memory, for `GET /api/v1/events`.

use std::{collections::VecDeque, sync::Arc};

use parking_lot::Mutex;

use crate::event::Event;

/// A bounded ring of the most recent events; the oldest is dropped when full.
pub struct EventRing {
    capacity: usize,
    events: Mutex<VecDeque<Arc<Event>>>,
}

impl EventRing {
    /// A ring that keeps at most `capacity` events.
    pub fn new(capacity: usize) -> EventRing {
        EventRing {
            capacity,
            events: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
        }
    }

    /// Adds an event, dropping the oldest when full.
    pub fn push(&self, event: Arc<Event>) {
        let mut events = self.events.lock();
        if events.len() == self.capacity {
            events.pop_front();
        }
        events.push_back(event);
    }

    /// The newest `limit` events (about `charge_point_id`, when given), oldest first.
    pub fn recent(&self, charge_point_id: Option<&str>, limit: usize) -> Vec<Arc<Event>> {
        let events = self.events.lock();
        let mut newest: Vec<Arc<Event>> = events
            .iter()
            .rev()
            .filter(|e| charge_point_id.is_none_or(|id| e.charge_point_id() == id))
            .take(limit)
            .cloned()
            .collect();
        newest.reverse();
        newest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventData, MessageData, MESSAGE_RECEIVED};
    use ocpp::{MessageType, OcppVersion};

    fn event(cp: &str, id: &str) -> Arc<Event> {
        let data = MessageData::new(
            OcppVersion::V16,
            MessageType::Call,
            id,
            None,
            "c",
            "n".into(),
        );
        Arc::new(Event::new(
            Event::source_of("n"),
            MESSAGE_RECEIVED,
            cp,
            EventData::Message(data),
        ))
    }

    fn ids(events: &[Arc<Event>]) -> Vec<String> {
        events
            .iter()
            .map(|e| match &e.data {
                EventData::Message(m) => m.message_id.clone(),
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn keeps_newest_and_filters() {
        let ring = EventRing::new(3);
        for (cp, id) in [("A", "1"), ("B", "2"), ("A", "3"), ("A", "4")] {
            ring.push(event(cp, id));
        }
        assert_eq!(ids(&ring.recent(None, 10)), ["2", "3", "4"]);
        assert_eq!(ids(&ring.recent(Some("A"), 10)), ["3", "4"]);
        assert_eq!(ids(&ring.recent(Some("A"), 1)), ["4"]);
        assert!(ring.recent(Some("C"), 10).is_empty());
    }
}
