//! kiln-backends: Cranelift code generation (JIT and AOT) and its runtime.
//!
//! SKELETON: the JIT work replaces this file.
