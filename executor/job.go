package executor

// Job is one decided compaction of one target, as the policy engine hands it
// to the executor.
type Job struct {
	// Target is the config name of the target.
	Target string
	// Trigger is the kind of the signal that caused it (policy.Kind*); for
	// a coalesced run, the kind of the most urgent signal.
	Trigger string
	// Reason is a human-readable why, for the log line.
	Reason string
	// DryRun reports without changing storage.
	DryRun bool
	// Scan runs the backend's integrity scan after compacting and puts the
	// anomalies in the report (pre-migration).
	Scan bool
}
