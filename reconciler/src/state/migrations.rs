//! State database schema versions and the migrations between them.
