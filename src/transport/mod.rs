//! The only code that touches sockets: the TCP data channel, the ZeroMQ return channel (B's
//! DEALER and A's hub), the frame buffers B returns without copying, and the one wait that
//! drivers block in. Everything here moves messages; nothing decides what they mean.

pub mod hub;
pub mod poll;
pub mod pool;
pub mod ret;
pub mod tcp;
pub mod wake;
