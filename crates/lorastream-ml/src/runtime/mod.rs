//! What the model layer runs on: the device and dtype, the CPU thread
//! budgets of serving and learning, and the seeded RNG.

pub mod device;
pub mod rng;
pub mod threads;
