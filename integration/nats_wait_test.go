package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/papyra/watcher/internal/testutil"
)

// TestNATSRequestDuringCompactionWaits: a pre-backup request that arrives
// while a (throttled) growth compaction of the target runs is answered with
// the report of a compaction that started after that one ended, so it
// reflects storage after the request arrived: a record appended just before
// the request is in what the reply reports. The target sets method =
// "copy": only the throttled rewrite runs long enough for a request to
// arrive during it (it copies a file whose records are all kept; with the
// default method that compaction changes nothing and takes milliseconds).
func TestNATSRequestDuringCompactionWaits(t *testing.T) {
	ns := testutil.StartNATS(t)
	dir := t.TempDir()
	addr := freeAddr(t)
	data := filepath.Join(dir, "data")
	path := filepath.Join(data, "events.ndjson")
	writeFile(t, path, genRecords(0, 20, 1795599000, 90))
	cfg := writeConfig(t, dir, daemonHeader(addr, "", `io_bytes_per_second = 2000000`)+
		fmt.Sprintf("\n[nats]\nurl = %q\n", ns.URL)+jsonTargetMethod("events", "events.ndjson", 1000000, "copy"))
	d := startDaemon(t, cfg, addr)
	d.WaitReady(20 * time.Second)

	// ~5 MB of growth: the growth compaction copies it at 2 MB/s.
	appendRecords(t, path, genRecords(20, 20000, 1795599500, 150))
	eventually(t, 20*time.Second, "the growth compaction is writing", func() (bool, string) {
		return len(leftovers(t, data)) > 0, "no temp file yet"
	})
	marker := []byte(`{"kind": "event", "event_type": "Marker", "timestamp": 1795599999.0}` + "\n")
	appendRecords(t, path, marker)
	sent := time.Now()
	r := runWatcher(t, 60*time.Second, "request", "pre-backup", "--nats", ns.URL, "--expect", "1",
		"--timeout", "45s", "--json")
	wantCode(t, r, 0, "pre-backup during a compaction")
	var replies []struct {
		OK      bool `json:"ok"`
		Reports []struct {
			Trigger       string    `json:"trigger"`
			StartedAt     time.Time `json:"started_at"`
			BeforeRecords int64     `json:"before_records"`
			AfterRecords  int64     `json:"after_records"`
			Error         string    `json:"error"`
		} `json:"reports"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &replies); err != nil || len(replies) != 1 || len(replies[0].Reports) != 1 {
		t.Fatalf("replies: %v\n%s", err, r)
	}
	rep := replies[0].Reports[0]
	if rep.Trigger != "nats" || rep.Error != "" {
		t.Fatalf("report %+v", rep)
	}
	if rep.StartedAt.Before(sent) {
		t.Fatalf("the reply's compaction started at %s, before the request was sent at %s", rep.StartedAt, sent)
	}
	// The growth compaction had to finish first: its log line comes before
	// the reply's compaction started.
	growth := d.WaitLog(5*time.Second, "msg=compaction", "trigger=growth")
	if growth == "" {
		t.Fatalf("no growth compaction logged:\n%s", d.Stderr())
	}
	if rep.AfterRecords != 20+20000+1 {
		t.Fatalf("the reply reports %d records, want all %d including the marker", rep.AfterRecords, 20+20000+1)
	}
	got, _ := os.ReadFile(path)
	if bytes.Count(got, marker) != 1 {
		t.Fatalf("marker present %d times", bytes.Count(got, marker))
	}
	d.StopClean()
}
