//! Host and kernel plumbing shared by Berth's CNI plugins and node agent:
//! entering network namespaces ([`netns`]) and a synchronous rtnetlink
//! client ([`netlink`]) with one module per kind of object. Nothing here
//! knows the CNI protocol.

pub mod netlink;
pub mod netns;
