//! Label selectors (in progress).
