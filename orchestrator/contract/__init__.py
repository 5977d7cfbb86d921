"""The wire contract: report and agent models, timestamps, durations, typed errors."""
