//! Verified asset downloads into the content-addressed cache (`state_dir/cache`).
