//! Server-side partition assignors (pure): given the members of a consumer group, what each
//! subscribes to, what each owns now and the topics' partition counts, compute the target
//! assignment. The coordinator runs one (sticky by default, as KIP-848's `uniform` assignor)
//! and moves only the partitions whose owner changes.
//!
//! Every assignor guarantees: each partition of a subscribed topic goes to exactly one member,
//! and only to a member subscribed to its topic; the result depends only on the input (members
//! are taken in id order), so every coordinator computes the same.

use std::collections::{BTreeMap, BTreeSet};

/// A partition of a topic.
pub type TopicPartition = (String, u32);

/// One member as an assignor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    pub member_id: String,
    /// Topics the member subscribes to (a pattern already resolved against the topics).
    pub topics: BTreeSet<String>,
    /// Partitions the member owns now (what stickiness keeps).
    pub owned: BTreeSet<TopicPartition>,
}

/// Member id → its partitions.
pub type Assignment = BTreeMap<String, BTreeSet<TopicPartition>>;

/// Which assignor a group uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AssignorKind {
    /// Per topic, consecutive ranges of partitions to members in id order (Kafka's `range`).
    Range,
    /// All partitions dealt out in turn to the members subscribed to each (`roundrobin`).
    RoundRobin,
    /// Balanced, and keeps each member's partitions where balance allows (KIP-848 `uniform`).
    #[default]
    Sticky,
}

impl AssignorKind {
    pub fn name(self) -> &'static str {
        match self {
            AssignorKind::Range => "range",
            AssignorKind::RoundRobin => "roundrobin",
            AssignorKind::Sticky => "uniform",
        }
    }

    pub fn from_name(name: &str) -> Option<AssignorKind> {
        match name {
            "range" => Some(AssignorKind::Range),
            "roundrobin" => Some(AssignorKind::RoundRobin),
            "uniform" | "sticky" => Some(AssignorKind::Sticky),
            _ => None,
        }
    }

    /// The target assignment. `partitions` maps each existing topic to its partition count;
    /// subscriptions to topics not in it are ignored (the topic does not exist, yet).
    pub fn assign(self, members: &[MemberSpec], partitions: &BTreeMap<String, u32>) -> Assignment {
        let mut sorted: Vec<&MemberSpec> = members.iter().collect();
        sorted.sort_by(|a, b| a.member_id.cmp(&b.member_id));
        sorted.dedup_by(|a, b| a.member_id == b.member_id);
        let mut out: Assignment = sorted
            .iter()
            .map(|m| (m.member_id.clone(), BTreeSet::new()))
            .collect();
        match self {
            AssignorKind::Range => range(&sorted, partitions, &mut out),
            AssignorKind::RoundRobin => round_robin(&sorted, partitions, &mut out),
            AssignorKind::Sticky => sticky(&sorted, partitions, &mut out),
        }
        out
    }
}

/// The subscribed partitions, in (topic, partition) order.
fn subscribed(members: &[&MemberSpec], partitions: &BTreeMap<String, u32>) -> Vec<TopicPartition> {
    let topics: BTreeSet<&String> = members.iter().flat_map(|m| m.topics.iter()).collect();
    topics
        .into_iter()
        .filter_map(|t| partitions.get(t).map(|&n| (t, n)))
        .flat_map(|(t, n)| (0..n).map(move |p| (t.clone(), p)))
        .collect()
}

fn range(members: &[&MemberSpec], partitions: &BTreeMap<String, u32>, out: &mut Assignment) {
    for (topic, &count) in partitions {
        let takers: Vec<&&MemberSpec> = members
            .iter()
            .filter(|m| m.topics.contains(topic))
            .collect();
        if takers.is_empty() {
            continue;
        }
        let (each, extra) = (count / takers.len() as u32, count % takers.len() as u32);
        let mut next = 0;
        for (i, member) in takers.iter().enumerate() {
            let share = each + u32::from((i as u32) < extra);
            let owned = out.entry(member.member_id.clone()).or_default();
            owned.extend((next..next + share).map(|p| (topic.clone(), p)));
            next += share;
        }
    }
}

fn round_robin(members: &[&MemberSpec], partitions: &BTreeMap<String, u32>, out: &mut Assignment) {
    if members.is_empty() {
        return;
    }
    let mut turn = 0usize;
    for tp in subscribed(members, partitions) {
        // The next member in turn that subscribes to the partition's topic.
        for step in 0..members.len() {
            let member = members[(turn + step) % members.len()];
            if member.topics.contains(&tp.0) {
                out.entry(member.member_id.clone()).or_default().insert(tp);
                turn = (turn + step + 1) % members.len();
                break;
            }
        }
    }
}

fn sticky(members: &[&MemberSpec], partitions: &BTreeMap<String, u32>, out: &mut Assignment) {
    let all = subscribed(members, partitions);
    if members.is_empty() || all.is_empty() {
        return;
    }
    let eligible = |member: &MemberSpec, tp: &TopicPartition| member.topics.contains(&tp.0);
    // How many partitions a member may hold: an even share of the partitions it can take
    // (exact for a group whose members all subscribe to the same topics).
    let quota = all.len().div_ceil(members.len());
    // 1. Keep what each member owns and may still own, in member order, up to its quota.
    let mut taken: BTreeSet<TopicPartition> = BTreeSet::new();
    for member in members {
        let keep: Vec<TopicPartition> = member
            .owned
            .iter()
            .filter(|tp| partitions.get(&tp.0).is_some_and(|&n| tp.1 < n))
            .filter(|tp| eligible(member, tp) && !taken.contains(*tp))
            .take(quota)
            .cloned()
            .collect();
        taken.extend(keep.iter().cloned());
        out.entry(member.member_id.clone())
            .or_default()
            .extend(keep);
    }
    // 2. Give every other partition to the least loaded member that may take it.
    for tp in all.iter().filter(|tp| !taken.contains(*tp)) {
        let Some(member) = members
            .iter()
            .filter(|m| eligible(m, tp))
            .min_by_key(|m| (out[&m.member_id].len(), &m.member_id))
        else {
            continue;
        };
        out.get_mut(&member.member_id)
            .map(|owned| owned.insert(tp.clone()));
    }
    // 3. Even out: move one partition at a time from a member with at least two more than an
    //    eligible other, until no such move exists. Each move lowers the sum of squares of the
    //    loads, so this ends; a partition the receiver owned before goes first (stickiness).
    loop {
        let mut best: Option<(usize, String, String, TopicPartition)> = None;
        for giver in members {
            let load = out[&giver.member_id].len();
            for tp in &out[&giver.member_id] {
                for taker in members.iter().filter(|t| eligible(t, tp)) {
                    let gap = load.saturating_sub(out[&taker.member_id].len());
                    if gap < 2 {
                        continue;
                    }
                    let score = gap * 2 + usize::from(taker.owned.contains(tp));
                    if best.as_ref().is_none_or(|b| score > b.0) {
                        best = Some((
                            score,
                            giver.member_id.clone(),
                            taker.member_id.clone(),
                            tp.clone(),
                        ));
                    }
                }
            }
        }
        let Some((_, giver, taker, tp)) = best else {
            break;
        };
        out.get_mut(&giver).map(|owned| owned.remove(&tp));
        out.get_mut(&taker).map(|owned| owned.insert(tp));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(id: &str, topics: &[&str], owned: &[(&str, u32)]) -> MemberSpec {
        MemberSpec {
            member_id: id.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            owned: owned.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
        }
    }

    fn topics(list: &[(&str, u32)]) -> BTreeMap<String, u32> {
        list.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn owned(assignment: &Assignment, id: &str) -> Vec<(String, u32)> {
        assignment[id].iter().cloned().collect()
    }

    #[test]
    fn range_gives_consecutive_ranges_per_topic() {
        let members = [member("b", &["t"], &[]), member("a", &["t", "u"], &[])];
        let result = AssignorKind::Range.assign(&members, &topics(&[("t", 5), ("u", 2)]));
        assert_eq!(
            owned(&result, "a"),
            vec![
                ("t".into(), 0),
                ("t".into(), 1),
                ("t".into(), 2),
                ("u".into(), 0),
                ("u".into(), 1)
            ]
        );
        assert_eq!(owned(&result, "b"), vec![("t".into(), 3), ("t".into(), 4)]);
    }

    #[test]
    fn round_robin_deals_partitions_in_turn() {
        let members = [member("a", &["t"], &[]), member("b", &["t"], &[])];
        let result = AssignorKind::RoundRobin.assign(&members, &topics(&[("t", 5)]));
        assert_eq!(result["a"].len(), 3);
        assert_eq!(result["b"].len(), 2);
        assert!(result["a"].contains(&("t".into(), 0)) && result["b"].contains(&("t".into(), 1)));
    }

    /// A member joins a balanced group of three on twelve partitions: it takes three, one from
    /// each, and nobody else's partitions move.
    #[test]
    fn sticky_moves_only_what_balance_needs() {
        let before = AssignorKind::Sticky.assign(
            &[
                member("a", &["t"], &[]),
                member("b", &["t"], &[]),
                member("c", &["t"], &[]),
            ],
            &topics(&[("t", 12)]),
        );
        let owned_now = |id: &str| -> Vec<(&str, u32)> {
            before[id].iter().map(|(t, p)| (t.as_str(), *p)).collect()
        };
        let members = [
            member("a", &["t"], &owned_now("a")),
            member("b", &["t"], &owned_now("b")),
            member("c", &["t"], &owned_now("c")),
            member("d", &["t"], &[]),
        ];
        let after = AssignorKind::Sticky.assign(&members, &topics(&[("t", 12)]));
        for id in ["a", "b", "c"] {
            assert_eq!(after[id].len(), 3);
            assert!(
                after[id].is_subset(&before[id]),
                "{id} only gives up partitions"
            );
        }
        assert_eq!(after["d"].len(), 3);
    }

    #[test]
    fn nothing_is_assigned_for_unknown_topics_or_to_nobody() {
        let result =
            AssignorKind::Sticky.assign(&[member("a", &["missing"], &[])], &topics(&[("t", 3)]));
        assert!(result["a"].is_empty());
        for kind in [
            AssignorKind::Range,
            AssignorKind::RoundRobin,
            AssignorKind::Sticky,
        ] {
            assert!(kind.assign(&[], &topics(&[("t", 3)])).is_empty());
            assert_eq!(AssignorKind::from_name(kind.name()), Some(kind));
        }
    }

    fn group() -> impl Strategy<Value = (Vec<MemberSpec>, BTreeMap<String, u32>)> {
        let topic_names = ["a", "b", "c"];
        (
            proptest::collection::vec(0u32..9, 3),
            proptest::collection::vec(
                (
                    proptest::sample::subsequence(topic_names.to_vec(), 1..=3),
                    proptest::collection::vec((0usize..3, 0u32..9), 0..6),
                ),
                1..7,
            ),
        )
            .prop_map(move |(counts, specs)| {
                let partitions: BTreeMap<String, u32> = topic_names
                    .iter()
                    .zip(counts)
                    .map(|(t, n)| (t.to_string(), n))
                    .collect();
                let members = specs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (subscribed, owned))| MemberSpec {
                        member_id: format!("m{i}"),
                        topics: subscribed.iter().map(|t| t.to_string()).collect(),
                        owned: owned
                            .into_iter()
                            .map(|(t, p)| (topic_names[t].to_string(), p))
                            .collect(),
                    })
                    .collect();
                (members, partitions)
            })
    }

    proptest! {
        /// Every subscribed partition goes to exactly one member, and only to a subscriber.
        #[test]
        fn every_assignor_assigns_each_partition_once((members, partitions) in group()) {
            for kind in [AssignorKind::Range, AssignorKind::RoundRobin, AssignorKind::Sticky] {
                let result = kind.assign(&members, &partitions);
                let mut seen = BTreeSet::new();
                for (id, owned) in &result {
                    let spec = members.iter().find(|m| &m.member_id == id).unwrap();
                    for tp in owned {
                        prop_assert!(spec.topics.contains(&tp.0), "{kind:?}: {id} got {tp:?}");
                        prop_assert!(tp.1 < partitions[&tp.0]);
                        prop_assert!(seen.insert(tp.clone()), "{kind:?}: {tp:?} twice");
                    }
                }
                let expected: BTreeSet<TopicPartition> = members
                    .iter()
                    .flat_map(|m| m.topics.iter())
                    .flat_map(|t| (0..partitions[t]).map(move |p| (t.clone(), p)))
                    .collect();
                prop_assert_eq!(seen, expected, "{:?}", kind);
                prop_assert_eq!(kind.assign(&members, &partitions), result, "deterministic");
            }
        }

        /// When every member subscribes to the same topics, the sticky assignor is balanced
        /// (loads differ by at most one) and a member keeps every partition it owned, up to
        /// its share, that nobody listed earlier also claims.
        #[test]
        fn sticky_is_balanced_and_sticky_for_uniform_subscriptions((members, partitions) in group()) {
            let topics: BTreeSet<String> = members[0].topics.clone();
            let members: Vec<MemberSpec> = members
                .into_iter()
                .map(|m| MemberSpec { topics: topics.clone(), ..m })
                .collect();
            let result = AssignorKind::Sticky.assign(&members, &partitions);
            let loads: Vec<usize> = result.values().map(BTreeSet::len).collect();
            let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
            prop_assert!(max - min <= 1, "loads {loads:?}");
            // Re-running with the result as what each owns moves nothing.
            let settled: Vec<MemberSpec> = members
                .iter()
                .map(|m| MemberSpec { owned: result[&m.member_id].clone(), ..m.clone() })
                .collect();
            prop_assert_eq!(AssignorKind::Sticky.assign(&settled, &partitions), result);
        }
    }
}
