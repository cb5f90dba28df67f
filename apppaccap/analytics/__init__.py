"""Traffic analytics over connection rows and usage counters: group-by top-N, alerts."""
