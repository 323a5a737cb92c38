package main

import (
	"testing"

	"github.com/papyra/watcher/backends"
)

// TestTriggerTargetMethod: the disk trigger learns each file target's
// method (auto when the config leaves it out) to order its compactions.
func TestTriggerTargetMethod(t *testing.T) {
	cfg, _, err := parse(t, `
[[target]]
name = "copied"
backend = "json"
path = "/data/a.ndjson"
method = "copy"
[[target]]
name = "default"
backend = "rotating"
path = "/data/b.log"
max_bytes = 1000
max_files = 3
`)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"copied": backends.MethodCopy, "default": backends.MethodAuto}
	for _, tc := range cfg.Targets {
		if got := triggerTarget(tc).Method; got != want[tc.Name] {
			t.Errorf("target %s: trigger target method %q, want %q", tc.Name, got, want[tc.Name])
		}
	}
}
