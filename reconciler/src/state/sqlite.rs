//! The SQLite implementation of [`super::StateStore`].
