//! kiln: library facade.
