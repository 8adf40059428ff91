"""The engine: Recipe -> graph of keyed nodes -> plan (diff against lock and store) -> apply -> store and lock."""
