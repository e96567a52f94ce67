//! Per-Kafka-partition bookkeeping of read and acknowledged offsets: which offset may be stored
//! for commit. Pure logic, no librdkafka, so it is unit-tested on its own.
//!
//! A lane (Kafka partition) keeps the offsets `read` handed out, in order, each with its
//! acknowledged flag. The committable offset is one past the last entry of the contiguous
//! acknowledged prefix. Offsets need not be consecutive (compaction and transaction markers
//! leave gaps), which is why the prefix is over the offsets handed out, not over `n, n+1, …`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::{BufferError, Position};

/// The lanes this consumer currently owns.
#[derive(Debug, Default)]
pub(crate) struct Lanes {
    owned: HashMap<u32, Lane>,
    /// Lanes revoked at least once: a late ack for one of them is expected (the entry was read
    /// before the rebalance) and ignored; the new owner reads it again (at least once).
    revoked: BTreeSet<u32>,
}

#[derive(Debug, Default)]
struct Lane {
    /// Offsets handed out by `read` and not yet below the committable prefix, ascending.
    outstanding: VecDeque<(u64, bool)>,
    /// One past the newest offset ever handed out; acks at or beyond it are unknown.
    next_read: Option<u64>,
}

impl Lanes {
    /// The group gave us `lane`; reading starts at its committed offset, so whatever was
    /// known about it before starts afresh.
    pub(crate) fn assign(&mut self, lane: u32) {
        self.owned.insert(lane, Lane::default());
    }

    /// The group took `lane` away: forget what was read from it and not committed.
    pub(crate) fn revoke(&mut self, lane: u32) {
        self.owned.remove(&lane);
        self.revoked.insert(lane);
    }

    /// `read` hands out `(lane, seq)`. Returns false, registering nothing, when the lane is
    /// not owned (the message was fetched before a revoke that was processed since): its ack
    /// will be ignored and the new owner reads it again.
    pub(crate) fn read(&mut self, lane: u32, seq: u64) -> bool {
        let Some(l) = self.owned.get_mut(&lane) else {
            return false;
        };
        if l.next_read.is_some_and(|n| seq < n) {
            // A message from before the lane was re-assigned: not ours to commit.
            return false;
        }
        l.outstanding.push_back((seq, false));
        l.next_read = Some(seq + 1);
        true
    }

    /// Whether `lane` is owned (an entry read from it may still be committed by us).
    pub(crate) fn owns(&self, lane: u32) -> bool {
        self.owned.contains_key(&lane)
    }

    /// Marks `positions` acknowledged; returns, per lane whose prefix advanced, the offset to
    /// store (one past the prefix). Validates every position before changing anything.
    pub(crate) fn ack(
        &mut self,
        positions: &[Position],
    ) -> Result<BTreeMap<u32, u64>, BufferError> {
        let unknown = |p: &Position| BufferError::UnknownPosition {
            lane: p.lane,
            seq: p.seq,
        };
        let mut marks = Vec::with_capacity(positions.len());
        for p in positions {
            // A lane revoked at least once may see acks of entries read before the revoke
            // (even if it was assigned to us again since): those are ignored.
            let was_revoked = self.revoked.contains(&p.lane);
            let Some(lane) = self.owned.get(&p.lane) else {
                if was_revoked {
                    continue;
                }
                return Err(unknown(p));
            };
            if lane.next_read.is_none_or(|n| p.seq >= n) {
                if was_revoked {
                    continue;
                }
                return Err(unknown(p));
            }
            match lane.outstanding.front() {
                // Already below the committable prefix: a repeated ack.
                None => continue,
                Some(&(first, _)) if p.seq < first => continue,
                Some(_) => {}
            }
            match lane
                .outstanding
                .binary_search_by_key(&p.seq, |&(seq, _)| seq)
            {
                Ok(i) => marks.push((p.lane, i)),
                Err(_) if was_revoked => {}
                Err(_) => return Err(unknown(p)),
            }
        }
        let mut touched = BTreeSet::new();
        for (lane, i) in marks {
            if let Some(l) = self.owned.get_mut(&lane) {
                l.outstanding[i].1 = true;
                touched.insert(lane);
            }
        }
        let mut advanced = BTreeMap::new();
        for lane in touched {
            let Some(l) = self.owned.get_mut(&lane) else {
                continue;
            };
            let mut store = None;
            while let Some(&(seq, true)) = l.outstanding.front() {
                l.outstanding.pop_front();
                store = Some(seq + 1);
            }
            if let Some(next) = store {
                advanced.insert(lane, next);
            }
        }
        Ok(advanced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(lane: u32, seq: u64) -> Position {
        Position { lane, seq }
    }

    #[test]
    fn only_the_contiguous_prefix_advances() {
        let mut l = Lanes::default();
        l.assign(0);
        for seq in [10, 11, 12, 14, 15] {
            assert!(l.read(0, seq));
        }
        assert!(l.ack(&[pos(0, 12), pos(0, 14)]).unwrap().is_empty());
        assert_eq!(l.ack(&[pos(0, 10)]).unwrap(), BTreeMap::from([(0, 11)]));
        // 13 was never handed out (a gap in the log): 11 and 12 complete the prefix up to 14.
        assert_eq!(l.ack(&[pos(0, 11)]).unwrap(), BTreeMap::from([(0, 15)]));
        assert_eq!(l.ack(&[pos(0, 15)]).unwrap(), BTreeMap::from([(0, 16)]));
        // repeated ack below the prefix is harmless
        assert!(l.ack(&[pos(0, 10)]).unwrap().is_empty());
    }

    #[test]
    fn unknown_positions_are_refused_without_side_effects() {
        let mut l = Lanes::default();
        l.assign(1);
        assert!(l.read(1, 5));
        assert!(l.read(1, 7));
        for bad in [pos(1, 8), pos(1, 6), pos(2, 0)] {
            assert!(matches!(
                l.ack(&[pos(1, 5), bad]),
                Err(BufferError::UnknownPosition { .. })
            ));
        }
        // the valid half of the refused batches was not applied
        assert_eq!(l.ack(&[pos(1, 5)]).unwrap(), BTreeMap::from([(1, 6)]));
    }

    #[test]
    fn revoked_lanes_forget_their_state_and_ignore_late_acks() {
        let mut l = Lanes::default();
        l.assign(0);
        l.assign(1);
        assert!(l.read(0, 0));
        assert!(l.read(1, 0));
        assert!(l.read(1, 1));
        l.revoke(1);
        assert!(!l.owns(1));
        assert!(
            !l.read(1, 2),
            "a message fetched before the revoke is not registered"
        );
        assert_eq!(
            l.ack(&[pos(1, 0), pos(0, 0)]).unwrap(),
            BTreeMap::from([(0, 1)])
        );
        // assigned again: starts afresh from the committed offset; stale acks are ignored
        l.assign(1);
        assert!(l.read(1, 1));
        assert!(l.ack(&[pos(1, 0), pos(1, 7)]).unwrap().is_empty());
        assert_eq!(l.ack(&[pos(1, 1)]).unwrap(), BTreeMap::from([(1, 2)]));
    }

    #[test]
    fn unassigned_lanes_are_not_registered() {
        let mut l = Lanes::default();
        assert!(!l.read(4, 0));
        assert!(matches!(
            l.ack(&[pos(4, 0)]),
            Err(BufferError::UnknownPosition { lane: 4, seq: 0 })
        ));
    }
}
