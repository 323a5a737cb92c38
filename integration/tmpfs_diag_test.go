package integration

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTmpfsPressureNothingReclaimable: a tmpfs filled past high_percent by
// a file that is not a target, with a target that holds nothing to drop:
// the daemon compacts what it can, then says once, loudly, that pressure
// persists with nothing left to reclaim — in the log, in /status and in the
// warnings metric.
func TestTmpfsPressureNothingReclaimable(t *testing.T) {
	mnt := mountTmpfs(t, 20)
	dir := t.TempDir()
	addr := freeAddr(t)
	target := filepath.Join(mnt, "events.ndjson")
	writeFile(t, target, genRecords(0, 50, 1795599000, 90))
	writeFile(t, filepath.Join(mnt, "not-a-target.bin"), make([]byte, 18<<20))
	cfg := writeConfig(t, dir, fmt.Sprintf(`[watcher]
state_dir = "state"
http_listen = %q
node = "it-node"

[triggers.timer]
interval = "0s"

[triggers.growth]
min_bytes = 1099511627776

[triggers.disk]
interval = "200ms"
high_percent = 70
low_percent = 50
predict_horizon = "0s"

[[target]]
name = "events"
backend = "json"
path = %q
[target.retention]
max_records = 1000
`, addr, target))
	d := startDaemon(t, cfg, addr)
	d.WaitReady(20 * time.Second)
	// Once the retention estimate is there it says the target (50
	// records, limit 1,000) has nothing to give; before it, one
	// compaction may run on the target's size.
	d.WaitLog(20*time.Second, "disk pressure and nothing left to reclaim")

	eventually(t, 20*time.Second, "/status warns that nothing is left to reclaim", func() (bool, string) {
		code, body, err := d.Get("/status")
		if err != nil || code != 200 {
			return false, fmt.Sprint(code, err)
		}
		var doc struct {
			Warnings []string `json:"warnings"`
			Targets  []struct {
				Name     string   `json:"name"`
				Warnings []string `json:"warnings"`
			} `json:"targets"`
			Disks []struct {
				UnderPressure      bool `json:"under_pressure"`
				NothingReclaimable bool `json:"nothing_reclaimable"`
			} `json:"disks"`
		}
		if err := json.Unmarshal([]byte(body), &doc); err != nil {
			return false, err.Error()
		}
		ok := len(doc.Warnings) == 1 && strings.Contains(doc.Warnings[0], "nothing left to reclaim") &&
			len(doc.Targets) == 1 && len(doc.Targets[0].Warnings) == 1 &&
			strings.Contains(doc.Targets[0].Warnings[0], "nothing left to reclaim")
		return ok, body
	})
	eventually(t, 20*time.Second, "the warnings metric is set", func() (bool, string) {
		_, body, _ := d.Get("/metrics")
		return strings.Contains(body, `papyra_compactor_warnings{kind="disk_pressure_nothing_reclaimable",target="events"} 1`), body
	})
	// Said once, not every tick.
	time.Sleep(2 * time.Second) // ten disk ticks
	log := d.Stderr()
	if n := strings.Count(log, "nothing left to reclaim"); n != 2 {
		t.Fatalf("the condition was logged %d times (want once from the trigger, once from self-diagnosis):\n%s", n, log)
	}
}
