//! The model layer on libtorch (tch). For now: device selection and the runtime
//! facts `status` reports; models, LoRA and generation come with their issue.

pub mod device;
