//! Who owns a key of a partitioned cache: rendezvous (highest-random-weight) hashing over the
//! names of the members this node reaches, itself included.
//!
//! Every member scores every key by a hash of its name and the key's encoding; the highest score
//! owns it. A member that comes or goes moves only the keys it wins or won: the others keep
//! their owners. The hash is written out here (FNV-1a, then a 64-bit finalizer) rather than
//! taken from `std`, whose hasher may change between Rust releases: nodes built by different
//! compilers must agree on owners.

use std::sync::Arc;

use crate::id::NodeId;

/// The members a key may be owned by, as this node sees them.
#[derive(Clone, Debug)]
pub(crate) struct Owners {
    me: NodeId,
    peers: Arc<[NodeId]>,
}

impl Owners {
    /// Owners among `me` and the `peers` this node has a link to.
    pub(crate) fn new(me: NodeId, peers: impl IntoIterator<Item = NodeId>) -> Self {
        Self {
            me,
            peers: peers.into_iter().collect(),
        }
    }

    /// The owner of the key encoded as `key`: `None` for this node, or the peer's name.
    pub(crate) fn owner(&self, key: &[u8]) -> Option<&NodeId> {
        // Ties (vanishingly rare) go to the greater name: the same choice on every node.
        let mine = (score(&self.me, key), &self.me);
        self.peers
            .iter()
            .map(|peer| (score(peer, key), peer))
            .filter(|candidate| *candidate > mine)
            .max()
            .map(|(_, peer)| peer)
    }
}

/// A member's score for a key.
fn score(member: &NodeId, key: &[u8]) -> u64 {
    // The separator keeps ("ab", "c") and ("a", "bc") apart.
    finalize(fnv1a(
        fnv1a(FNV_OFFSET, member.as_str().as_bytes()) ^ 0xff,
        key,
    ))
}

/// A stable 64-bit hash of `bytes`, the same on every node and build.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    finalize(fnv1a(FNV_OFFSET, bytes))
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// MurmurHash3's 64-bit finalizer: FNV alone leaves the high bits of similar inputs alike.
fn finalize(mut hash: u64) -> u64 {
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn owners(me: &str, peers: &[&str]) -> Owners {
        Owners::new(NodeId::from(me), peers.iter().map(|&p| NodeId::from(p)))
    }

    /// The owner's name, whichever node asks.
    fn owner_name(owners: &Owners, key: &[u8]) -> String {
        owners.owner(key).unwrap_or(&owners.me).as_str().to_owned()
    }

    #[test]
    fn every_member_names_the_same_owner() {
        let views = [
            owners("a", &["b", "c"]),
            owners("b", &["c", "a"]),
            owners("c", &["a", "b"]),
        ];
        for key in 0_u32..1_000 {
            let key = key.to_le_bytes();
            let names: Vec<String> = views.iter().map(|v| owner_name(v, &key)).collect();
            assert!(names.iter().all(|n| n == &names[0]), "{names:?}");
        }
    }

    #[test]
    fn keys_spread_evenly() {
        let view = owners("a", &["b", "c"]);
        let mut counts = std::collections::BTreeMap::<String, u32>::new();
        for key in 0_u32..30_000 {
            *counts
                .entry(owner_name(&view, &key.to_le_bytes()))
                .or_default() += 1;
        }
        for (node, count) in &counts {
            assert!(
                (9_000..11_000).contains(count),
                "{node} owns {count} of 30,000"
            );
        }
    }

    proptest! {
        /// A member that leaves moves only its own keys; one that joins takes keys only for
        /// itself.
        #[test]
        fn a_membership_change_moves_only_the_changed_members_keys(
            key in proptest::collection::vec(any::<u8>(), 0..16),
            members in 2_usize..8,
        ) {
            let names: Vec<String> = (0..members).map(|i| format!("node-{i}")).collect();
            let all: Vec<&str> = names.iter().map(String::as_str).collect();
            let before = owner_name(&owners(all[0], &all[1..]), &key);
            let leaving = all[members - 1];
            let after = owner_name(&owners(all[0], &all[1..members - 1]), &key);
            if before != leaving {
                prop_assert_eq!(&after, &before);
            }
            let joined = owner_name(&owners(all[0], &[&all[1..], &["newcomer"]].concat()), &key);
            prop_assert!(joined == before || joined == "newcomer");
        }
    }
}
