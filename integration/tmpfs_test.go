package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/papyra/watcher/internal/testutil"
)

// mountTmpfs mounts a tmpfs of sizeMB megabytes in a temporary directory
// and unmounts it at the end of the test. Without root (or where mount
// fails) the test is skipped, or fails when CI is set.
func mountTmpfs(t *testing.T, sizeMB int) string {
	t.Helper()
	return testutil.MountTmpfs(t, sizeMB)
}

// usedPercent is the used space of the filesystem at path, as df counts it.
func usedPercent(t testing.TB, path string) float64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	used := float64(st.Blocks-st.Bfree) * float64(st.Bsize)
	avail := float64(st.Bavail) * float64(st.Bsize)
	return 100 * used / (used + avail)
}

// TestTmpfsDiskPressure: a 20 MB tmpfs filled past high_percent by a
// target is brought under low_percent by a disk-triggered compaction; no
// other trigger can fire.
func TestTmpfsDiskPressure(t *testing.T) {
	mnt := mountTmpfs(t, 20)
	dir := t.TempDir()
	addr := freeAddr(t)
	path := filepath.Join(mnt, "events.ndjson")
	initial := genRecords(0, 20, 1795599000, 90)
	writeFile(t, path, initial)
	cfg := writeConfig(t, dir, fmt.Sprintf(`[watcher]
state_dir = "state"
http_listen = %q
node = "it-node"

[policy]
debounce = "200ms"
max_wait = "1s"
cooldown = "100ms"
partial_line_grace = "876000h"

[triggers.timer]
interval = "0s"

[triggers.growth]
min_bytes = 1099511627776
min_ratio = 100

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
`, addr, path))
	d := startDaemon(t, cfg, addr)
	d.WaitReady(15 * time.Second)

	// About 15 MB of records, appended in large writes: 75% of the tmpfs.
	// Like Papyra's writer, every write opens and closes the file (a
	// descriptor held across a compaction would write to the old inode).
	var all bytes.Buffer
	all.Write(initial)
	seq := 20
	for usedPercent(t, mnt) < 75 {
		chunk := genRecords(seq, 5000, 1795599500+float64(seq), 90)
		seq += 5000
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(chunk); err != nil {
			t.Fatalf("filling the tmpfs: %v", err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		all.Write(chunk)
	}
	filled := usedPercent(t, mnt)
	t.Logf("tmpfs at %.1f%% after writing %d records (%d bytes)", filled, seq, all.Len())

	eventually(t, 20*time.Second, "usage under low_percent (50%)", func() (bool, string) {
		if d.Exited() {
			t.Fatalf("watcher run exited\n%s", d.Stderr())
		}
		u := usedPercent(t, mnt)
		return u < 50, fmt.Sprintf("%.1f%% used", u)
	})
	line := d.WaitLog(5*time.Second, "compaction", "target=events", "trigger=disk")
	t.Logf("log: %s", line)
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// The compaction may start while the fill is still being written; what
	// was appended meanwhile is kept. Nothing retained may be lost.
	if n := bytes.Count(got, []byte("\n")); n < 1000 || n >= seq || !isSuffixOfLines(got, all.Bytes()) {
		t.Errorf("the target holds %d lines; want the newest 1000 or more (appended during the compaction) of the %d written", n, seq)
	}
	eventually(t, 5*time.Second, "disk-triggered compaction in /metrics", func() (bool, string) {
		_, body, err := d.Get("/metrics")
		if err != nil {
			return false, err.Error()
		}
		s := parseMetrics(body)
		v, _ := metricValue(s, "papyra_compactor_compactions_total",
			map[string]string{"target": "events", "trigger": "disk", "result": "success"})
		k, _ := metricValue(s, "papyra_compactor_triggers_total", map[string]string{"kind": "disk"})
		g, _ := metricValue(s, "papyra_compactor_triggers_total", map[string]string{"kind": "growth"})
		if g != 0 {
			t.Errorf("triggers_total{kind=growth} = %v: growth should not have fired", g)
		}
		_, hasRatio := metricValue(s, "papyra_compactor_disk_used_ratio", map[string]string{"mountpoint": mnt})
		return v >= 1 && k >= 1 && hasRatio, fmt.Sprintf("compactions_total{trigger=disk,result=success} %v, triggers_total{kind=disk} %v, disk_used_ratio{mountpoint=%s} present %v", v, k, mnt, hasRatio)
	})
	d.StopClean()
}

// TestTmpfsENOSPC: when the compacted copy cannot be written for lack of
// space, `watcher compact` refuses it before writing (the free-space check)
// with a clear error saying what the copy needs and what is free, the
// original is intact and no temporary file is left; once space is freed it
// succeeds.
func TestTmpfsENOSPC(t *testing.T) {
	// 6 MB: once the filler is gone, room for the copy and its 1 MiB margin.
	mnt := mountTmpfs(t, 6)
	dir := t.TempDir()
	path := filepath.Join(mnt, "events.ndjson")
	// 1.5 MB of records; keeping 90% needs 1.35 MB more while both exist.
	original := genRecords(0, 7500, 1795599000, 90)
	writeFile(t, path, original)
	filler := filepath.Join(mnt, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	block := make([]byte, 64<<10)
	for {
		var st syscall.Statfs_t
		if err := syscall.Statfs(mnt, &st); err != nil {
			t.Fatal(err)
		}
		if int64(st.Bavail)*st.Bsize <= 512<<10 {
			break
		}
		if _, err := f.Write(block); err != nil {
			t.Fatalf("filling the tmpfs: %v", err)
		}
	}
	f.Close()
	cfg := writeConfig(t, dir, baseConfig+fmt.Sprintf(`
[[target]]
name = "events"
backend = "json"
path = %q
[target.retention]
max_records = 6750
`, path))
	id := statID(t, path)

	r := runWatcher(t, time.Minute, "compact", "--config", cfg, "--json")
	wantCode(t, r, 1, "compact on a full filesystem")
	reps := parseReports(t, r.Stdout)
	if len(reps) != 1 || !strings.Contains(reps[0].Error, "a copy needs ") {
		t.Fatalf("want one report whose error says \"a copy needs …\", got %+v", reps)
	}
	if !strings.Contains(reps[0].Error, " are free on "+mnt) {
		t.Errorf("the error does not say what is free where: %q", reps[0].Error)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, original) {
		t.Fatalf("the original changed after a failed compaction")
	}
	if statID(t, path) != id {
		t.Errorf("the original's inode, size or mtime changed after a failed compaction")
	}
	wantNoLeftovers(t, mnt, filepath.Join(dir, "state"))

	// The human summary says FAILED and why.
	r = runWatcher(t, time.Minute, "compact", "--config", cfg)
	wantCode(t, r, 1, "compact on a full filesystem")
	if !strings.Contains(r.Stdout, "FAILED") || !strings.Contains(r.Stdout, "a copy needs ") {
		t.Errorf("human summary:\n%s", r.Stdout)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	r = runWatcher(t, time.Minute, "compact", "--config", cfg, "--json")
	wantCode(t, r, 0, "compact once space is freed")
	got, _ := os.ReadFile(path)
	lines := splitLines(original)
	if want := bytes.Join(lines[len(lines)-6750:], nil); !bytes.Equal(got, want) {
		t.Errorf("after freeing space: %d bytes, want the newest 6750 records (%d bytes)", len(got), len(want))
	}
	wantNoLeftovers(t, mnt, filepath.Join(dir, "state"))
}
