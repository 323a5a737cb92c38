package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestRetentionAtStartRepoConfig: under the repository's config.toml (its
// default policy and triggers), a file already past its age limit is
// compacted within 15 s of `watcher run`, and /metrics shows
// reclaimable_bytes and oldest_record_age_seconds.
func TestRetentionAtStartRepoConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	data, err := os.ReadFile(filepath.Join(repoRoot, "config.toml"))
	if err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	listen := regexp.MustCompile(`(?m)^http_listen = "[^"]*"`)
	data = listen.ReplaceAll(data, []byte(fmt.Sprintf("http_listen = %q", addr)))
	cfg := writeConfig(t, dir, string(data))

	// events: max_age_seconds 7 days. 20000 records, the first half 8 days
	// old, the second half an hour old: about 4 MiB, far below the growth
	// trigger's 64 MiB, and the timer is 6 h away.
	now := float64(time.Now().Unix())
	var b strings.Builder
	for i := range 20000 {
		ts := now - 3600
		if i < 10000 {
			ts = now - 8*86400
		}
		fmt.Fprintf(&b, `{"kind":"event","system_id":"local","actor_address":"a","event_type":"e","payload":{"i":%d,"pad":"%s"},"timestamp":%.1f}`+"\n",
			i, strings.Repeat("x", 100), ts+float64(i)/1000)
	}
	path := filepath.Join(dir, "data", "events.ndjson")
	writeFile(t, path, []byte(b.String()))

	start := time.Now()
	d := startDaemon(t, cfg, addr)
	d.WaitReady(10 * time.Second)
	d.WaitLog(15*time.Second-time.Since(start), "msg=compaction", "target=events", "trigger=retention")
	if el := time.Since(start); el > 15*time.Second {
		t.Fatalf("compacted after %v, want within 15s", el)
	}
	if n := countLines(t, path); n != 10000 {
		t.Errorf("%d lines after compaction, want the 10000 retained", n)
	}
	eventually(t, 15*time.Second, "retention gauges on /metrics", func() (bool, string) {
		code, body, err := d.Get("/metrics")
		if err != nil || code != 200 {
			return false, fmt.Sprint(code, err)
		}
		for _, m := range []string{`papyra_compactor_reclaimable_bytes{target="events"}`,
			`papyra_compactor_oldest_record_age_seconds{target="events"}`,
			`papyra_compactor_retention_max_age_seconds{target="events"} 604800`,
			`papyra_compactor_last_success_timestamp_seconds{target="audit"} 0`} {
			if !strings.Contains(body, m) {
				return false, "no " + m
			}
		}
		return true, ""
	})
	code, body, _ := d.Get("/status")
	if code != 200 || !strings.Contains(body, `"why"`) || !strings.Contains(body, "oldest record") {
		t.Errorf("/status has no why/progress: %s", body)
	}
	d.StopClean()
}
