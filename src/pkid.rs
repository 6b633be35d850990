//! MQTT packet identifiers: one allocator for every side that sends QoS 1 packets (the module's
//! alerts and subscriptions in [`crate::delivery`], the embedded hub's deliveries in
//! [`crate::hub`]).
//!
//! MQTT 3.1.1 §2.3.1: a packet identifier is 1..=65535, and one in use (sent, not yet
//! acknowledged) is not given to another packet. Ids go round in order, as the Python SDK and
//! mosquitto hand them out, so an id comes back only after 65,534 others: a late acknowledgement
//! of an old packet cannot confirm a new one that happens to share its id.

/// The last identifier handed out; the next is the first free one after it.
#[derive(Clone, Copy, Debug, Default)]
pub struct PacketIds {
    last: u16,
}

impl PacketIds {
    /// The next identifier after the last one handed out for which `in_use` is false. At most
    /// 65,535 ids are ever in use at once (the callers' windows are far smaller), so one is free.
    pub fn next(&mut self, in_use: impl Fn(u16) -> bool) -> u16 {
        loop {
            self.last = self.last.wrapping_add(1).max(1);
            if !in_use(self.last) {
                return self.last;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_at_one_go_round_and_skip_zero() {
        let mut ids = PacketIds::default();
        assert_eq!(ids.next(|_| false), 1);
        assert_eq!(ids.next(|_| false), 2);
        let mut ids = PacketIds { last: u16::MAX - 1 };
        assert_eq!(ids.next(|_| false), u16::MAX);
        assert_eq!(ids.next(|_| false), 1, "0 is not a packet identifier");
    }

    #[test]
    fn an_id_in_use_is_skipped() {
        let mut ids = PacketIds::default();
        assert_eq!(ids.next(|id| id == 1 || id == 2), 3);
        assert_eq!(ids.next(|id| id == 4), 5);
    }
}
