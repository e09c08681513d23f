//! The waypoint: an L7 proxy per namespace. Not built yet; this binary says so rather than
//! pretending to work.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    eprintln!("waypoint: the L7 waypoint proxy is not implemented yet (tracked as an open issue)");
    std::process::ExitCode::from(2)
}
