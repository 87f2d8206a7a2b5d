//! Placeholder for the candle-based inference sidecar (issue 3). Until then the
//! local stack runs the gateway in front of `testkit`'s OpenAI-shaped upstream.

fn main() {
    eprintln!(
        "inference-server is not built yet; `make run` serves the gateway in front of the \
         OpenAI-shaped development upstream (testkit's `mock-upstream`)"
    );
    std::process::exit(2);
}
