//! Reading an agent's samples in time order from chunks that may overlap in time.
//!
//! Samples are stored in seq order, which is time order unless the agent's clock went back.
//! [`TimeMerge`] yields the samples of several sources (sealed chunks, the open head) in
//! `(time, seq)` order while holding only the sources that overlap the sample it yields next:
//! sources are opened in the order of their earliest time, and a sample is yielded only once no
//! unopened source can hold an earlier one. With no clock going back, one source is open at a
//! time, so a read of any range holds one chunk's samples, never the range.
//!
//! Invariant: the output is sorted by `(time, seq)` whatever the sources' order and overlap,
//! provided each source's `min_ms` is at most the time of each of its items. An item's order
//! is computed once, by the source that yields it, never again by the merge.

use std::collections::VecDeque;

use super::Result;

/// How the merge orders an item: `(time in ms since the Unix epoch, seq)`.
pub(crate) type Order = (u64, u64);

/// Something to open: a chunk, known by its earliest sample time.
#[derive(Clone, Debug)]
pub(crate) struct Source<K> {
    pub min_ms: u64,
    pub key: K,
}

/// Yields the items of `sources` in `(time, seq)` order; `open` turns a source into its items
/// with their order (in any order; they are sorted here), already filtered to what the caller
/// wants, appended to the empty buffer it is given.
pub(crate) struct TimeMerge<K, T, F> {
    sources: VecDeque<Source<K>>,
    active: Vec<VecDeque<(Order, T)>>,
    /// The buffer of the last source drained, handed to the next `open`: a read of many
    /// chunks allocates one buffer, not one per chunk.
    spare: Vec<(Order, T)>,
    open: F,
    done: bool,
}

impl<K, T, F: FnMut(K, Vec<(Order, T)>) -> Result<Vec<(Order, T)>>> TimeMerge<K, T, F> {
    pub(crate) fn new(mut sources: Vec<Source<K>>, open: F) -> Self {
        sources.sort_by_key(|s| s.min_ms);
        Self {
            sources: sources.into(),
            active: Vec::new(),
            spare: Vec::new(),
            open,
            done: false,
        }
    }

    /// The open source holding the smallest next item, with that item's order.
    fn smallest(&self) -> Option<(usize, Order)> {
        self.active
            .iter()
            .enumerate()
            .filter_map(|(i, items)| items.front().map(|(order, _)| (i, *order)))
            .min_by_key(|(_, order)| *order)
    }
}

impl<K, T, F: FnMut(K, Vec<(Order, T)>) -> Result<Vec<(Order, T)>>> Iterator
    for TimeMerge<K, T, F>
{
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        if self.done {
            return None;
        }
        loop {
            let smallest = self.smallest();
            let open_next = match (self.sources.front(), smallest) {
                (Some(source), Some((_, (time_ms, _)))) => source.min_ms <= time_ms,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if open_next {
                let Some(source) = self.sources.pop_front() else {
                    continue;
                };
                match (self.open)(source.key, std::mem::take(&mut self.spare)) {
                    Ok(mut items) => {
                        if !items.is_sorted_by_key(|(order, _)| *order) {
                            items.sort_by_key(|(order, _)| *order);
                        }
                        if !items.is_empty() {
                            self.active.push(items.into());
                        }
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
                continue;
            }
            let (idx, _) = smallest?;
            let item = self.active[idx].pop_front();
            if self.active[idx].is_empty() {
                self.spare = self.active.swap_remove(idx).into();
            }
            return item.map(|(_, item)| Ok(item));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    fn merged(sources: Vec<Vec<(u64, u64)>>) -> Vec<(u64, u64)> {
        let sources = sources
            .into_iter()
            .map(|items| Source {
                min_ms: items.iter().map(|i| i.0).min().unwrap_or(u64::MAX),
                key: items,
            })
            .collect();
        TimeMerge::new(sources, |items: Vec<(u64, u64)>, _| {
            Ok(items.into_iter().map(|item| (item, item)).collect())
        })
        .collect::<Result<Vec<_>>>()
        .expect("no error")
    }

    #[test]
    fn disjoint_sources_concatenate_and_overlapping_ones_interleave() {
        assert_eq!(
            merged(vec![vec![(5, 3), (6, 4)], vec![(1, 1), (2, 2)]]),
            [(1, 1), (2, 2), (5, 3), (6, 4)]
        );
        // A clock that went back inside a chunk and across chunks.
        assert_eq!(
            merged(vec![
                vec![(10, 1), (3, 2), (11, 3)],
                vec![(4, 4), (12, 5)],
                vec![],
                vec![(1, 6), (30, 7)],
            ]),
            [(1, 6), (3, 2), (4, 4), (10, 1), (11, 3), (12, 5), (30, 7)]
        );
        // Equal times keep seq order.
        assert_eq!(merged(vec![vec![(5, 2)], vec![(5, 1)]]), [(5, 1), (5, 2)]);
        assert_eq!(merged(vec![]), []);
    }

    #[test]
    fn only_overlapping_sources_are_open_at_once() {
        let mut most_open = 0;
        let sources: Vec<Source<u64>> = (0..100)
            .map(|i| Source {
                min_ms: i * 10,
                key: i,
            })
            .collect();
        let mut merge = TimeMerge::new(sources, |i: u64, mut buffer: Vec<_>| {
            assert!(buffer.is_empty(), "a spare buffer comes empty");
            buffer.extend((0..10).map(|j| ((i * 10 + j, j), j)));
            Ok(buffer)
        });
        let mut n = 0;
        while let Some(item) = merge.next() {
            item.expect("no error");
            most_open = most_open.max(merge.active.len());
            n += 1;
        }
        assert_eq!(n, 1_000);
        assert_eq!(most_open, 1);
    }

    proptest::proptest! {
        /// Whatever the sources, their overlap and their order inside: every item once, in
        /// `(time, seq)` order.
        #[test]
        fn any_sources_merge_into_time_order(
            times in proptest::collection::vec(proptest::collection::vec(0u64..50, 0..20), 0..8),
        ) {
            let mut seq = 0;
            let sources: Vec<Vec<(u64, u64)>> = times
                .into_iter()
                .map(|source| {
                    source
                        .into_iter()
                        .map(|time| {
                            seq += 1;
                            (time, seq)
                        })
                        .collect()
                })
                .collect();
            let mut expected: Vec<(u64, u64)> = sources.iter().flatten().copied().collect();
            expected.sort_unstable();
            proptest::prop_assert_eq!(merged(sources), expected);
        }
    }

    #[test]
    fn an_error_opening_a_source_ends_the_merge() {
        let sources = vec![Source { min_ms: 1, key: 1 }, Source { min_ms: 2, key: 2 }];
        let mut merge = TimeMerge::new(sources, |k: u64, _| {
            if k == 2 {
                Err(StoreError::Corrupt {
                    key: "k".to_owned(),
                    detail: "test".to_owned(),
                })
            } else {
                Ok(vec![((5, 1), ())])
            }
        });
        assert!(matches!(
            merge.next(),
            Some(Err(StoreError::Corrupt { .. }))
        ));
        assert!(merge.next().is_none());
    }
}
