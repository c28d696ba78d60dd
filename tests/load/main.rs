//! Load tests: a binary of their own because they want the machine to themselves (cargo runs
//! test binaries one after the other); beside other tests they would only measure the crowd.

// The harness serves the integration binary too; not all of it is used here.
#[allow(dead_code)]
#[path = "../integration/harness/mod.rs"]
mod harness;

mod load;
