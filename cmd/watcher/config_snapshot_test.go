package main

import (
	"strings"
	"testing"
	"time"
)

// TestConfigSnapshotTTL: watcher.snapshot_ttl is 1h by default and for
// "0s", taken as given within (0, 168h], and refused outside, naming the
// key.
func TestConfigSnapshotTTL(t *testing.T) {
	for text, want := range map[string]time.Duration{
		"":                          time.Hour,
		"snapshot_ttl = \"0s\"\n":   time.Hour,
		"snapshot_ttl = \"90m\"\n":  90 * time.Minute,
		"snapshot_ttl = \"168h\"\n": 168 * time.Hour,
		"snapshot_ttl = \"1s\"\n":   time.Second,
	} {
		cfg, _, err := parse(t, "[watcher]\n"+text)
		if err != nil {
			t.Fatalf("%q: %v", text, err)
		}
		if got := cfg.Watcher.SnapshotTTL.Duration; got != want {
			t.Errorf("%q: snapshot_ttl = %s, want %s", text, got, want)
		}
	}
	for _, v := range []string{"-1s", "169h", "1000h"} {
		_, _, err := parse(t, "[watcher]\nsnapshot_ttl = \""+v+"\"\n")
		if err == nil || !strings.Contains(err.Error(), "snapshot_ttl") || !strings.Contains(err.Error(), "line 2") {
			t.Errorf("snapshot_ttl = %s: error %v, want one naming watcher.snapshot_ttl on line 2", v, err)
		}
	}
}
