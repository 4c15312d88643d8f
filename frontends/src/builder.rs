//! `GraphBuilder`: builds primitive-op graphs in the style of model code.
//!
//! SKELETON: the model-zoo work replaces this file.
