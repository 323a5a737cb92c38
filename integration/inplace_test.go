package integration

// In-place compaction (method "auto") end to end, on real filesystems: a
// full ext4 disk that only the in-place cut can compact (the copy must fail
// cleanly there), a tmpfs where it falls back to the copy and says why, and
// a live Papyra-style writer while `watcher run` compacts in place and is
// SIGKILLed again and again.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/papyra/watcher/backends/ndjson"
	"github.com/papyra/watcher/internal/testutil"
)

// methodReport is the part of a report the shared report type leaves out.
type methodReport struct {
	Method string   `json:"method"`
	Notes  []string `json:"notes"`
	Error  string   `json:"error"`
}

// parseMethodReports decodes the method and notes of `watcher compact
// --json` output (parseReports checks the rest).
func parseMethodReports(t testing.TB, stdout string) []methodReport {
	t.Helper()
	var reps []methodReport
	if err := json.Unmarshal([]byte(stdout), &reps); err != nil {
		t.Fatalf("stdout is not a JSON array of reports: %v\n%s", err, stdout)
	}
	return reps
}

// stripFiller returns data without its first line when that line is a
// filler line, and the filler's length.
func stripFiller(data []byte) ([]byte, int) {
	i := bytes.IndexByte(data, '\n')
	if i >= 0 && ndjson.IsFiller(data[:i+1]) {
		return data[i+1:], i + 1
	}
	return data, 0
}

// papyraScanErrors lists what Papyra's scan() would report in data: an
// unterminated last line (TRUNCATED_LINE), a line json.loads rejects,
// blank lines included (CORRUPTED_LINE). The filler line passes. Papyra
// opens its files as strict UTF-8: bytes that are not UTF-8 anywhere make
// the whole scan fail.
func papyraScanErrors(data []byte) []string {
	if !utf8.Valid(data) {
		return []string{"UnicodeDecodeError: the file is not valid UTF-8"}
	}
	var out []string
	for i, line := range splitLines(data) {
		switch {
		case line[len(line)-1] != '\n':
			out = append(out, fmt.Sprintf("line %d: TRUNCATED_LINE %q", i+1, clipBytes(line, 80)))
		case !json.Valid(bytes.TrimSpace(line)):
			out = append(out, fmt.Sprintf("line %d: CORRUPTED_LINE %q", i+1, clipBytes(line, 80)))
		}
		if len(out) >= 5 {
			break
		}
	}
	return out
}

// papyraRecords returns the lines Papyra's reader returns from data: each
// line stripped, blank ones and those that are not a JSON object skipped.
// The lines are returned as stored (newline included). A file that is not
// valid UTF-8 gives nothing: Papyra's read fails on the whole file.
func papyraRecords(data []byte) [][]byte {
	if !utf8.Valid(data) {
		return nil
	}
	var out [][]byte
	for _, line := range splitLines(data) {
		s := bytes.TrimSpace(line)
		if len(s) == 0 || s[0] != '{' || !json.Valid(s) {
			continue
		}
		out = append(out, line)
	}
	return out
}

// inplaceTarget is a config of one json target for `watcher compact`.
func inplaceTarget(path string, keep int, method string) string {
	m := ""
	if method != "" {
		m = fmt.Sprintf("method = %q\n", method)
	}
	return baseConfig + fmt.Sprintf(`
[[target]]
name = "events"
backend = "json"
path = %q
%s
[target.retention]
max_records = %d
`, path, m, keep)
}

// TestInPlaceFullDisk: on a 64 MB ext4 filesystem filled to its last
// 0.5 MB, a 45 MB target whose retention keeps half is compacted in place
// (no free space needed): the file becomes at most one filler line and the
// newest records byte for byte, keeps its inode, and the space of the
// dropped head is given back. The same compaction with method = "copy"
// cannot write the survivors and must fail cleanly: refused by the
// free-space check, which says what it needs, the file unchanged.
func TestInPlaceFullDisk(t *testing.T) {
	const n, keep, pad = 100_000, 50_000, 300
	data := genRecords(0, n, 1795599000, pad)
	lines := splitLines(data)
	want := bytes.Join(lines[n-keep:], nil)
	dropped := int64(len(data) - len(want))

	t.Run("auto", func(t *testing.T) {
		mnt := testutil.MountExt4(t, 64)
		dir := t.TempDir()
		path := filepath.Join(mnt, "events.ndjson")
		writeFile(t, path, data)
		id := statID(t, path)
		testutil.FillDisk(t, mnt, 512<<10)
		before := testutil.Available(t, mnt)
		t.Logf("target %d bytes (%d records, keep %d: drop %d bytes); %d bytes available", len(data), n, keep, dropped, before)
		if before > 512<<10 {
			t.Fatalf("the filesystem is not full: %d bytes available", before)
		}
		cfg := writeConfig(t, dir, inplaceTarget(path, keep, ""))

		r := runWatcher(t, 2*time.Minute, "compact", "--config", cfg, "--json")
		wantCode(t, r, 0, "compact in place on a full filesystem")
		reps := parseReports(t, r.Stdout)
		mreps := parseMethodReports(t, r.Stdout)
		if len(reps) != 1 || reps[0].Error != "" {
			t.Fatalf("want one successful report, got %s", r.Stdout)
		}
		if mreps[0].Method != "in_place" {
			t.Fatalf("method %q, want in_place (notes %q)", mreps[0].Method, mreps[0].Notes)
		}
		if reps[0].BeforeRecords != n || reps[0].AfterRecords != keep {
			t.Errorf("report counts %d → %d records, want %d → %d", reps[0].BeforeRecords, reps[0].AfterRecords, n, keep)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		rest, filler := stripFiller(got)
		if !bytes.Equal(rest, want) {
			t.Fatalf("after the in-place compaction the file (%d bytes, filler %d) is not one filler line and the newest %d records (%d bytes): %s",
				len(got), filler, keep, len(want), firstDifference(rest, want))
		}
		if int64(filler) >= 64<<10 {
			t.Errorf("filler line of %d bytes: more than a filesystem block", filler)
		}
		if *reps[0].AfterBytes != int64(len(got)) {
			t.Errorf("after_bytes %d, the file has %d", *reps[0].AfterBytes, len(got))
		}
		if e := papyraScanErrors(got); len(e) > 0 {
			t.Errorf("Papyra's scan would report: %q", e)
		}
		if recs := papyraRecords(got); len(recs) != keep || !bytes.Equal(bytes.Join(recs, nil), want) {
			t.Errorf("Papyra's reader returns %d records, want the newest %d", len(recs), keep)
		}
		if statID(t, path).ino != id.ino {
			t.Errorf("the file changed its inode: in place must keep it")
		}
		after := testutil.Available(t, mnt)
		grew := after - before
		t.Logf("in place: filler %d bytes, available %d → %d (+%d; dropped %d)", filler, before, after, grew, dropped)
		// The filler keeps less than a block of the head; the blocks of the
		// rest are free again (give or take the extent tree's own blocks).
		if grew < dropped-int64(filler)-(64<<10) || grew > dropped+(64<<10) {
			t.Errorf("free space grew by %d bytes; the dropped head is %d bytes (filler %d)", grew, dropped, filler)
		}
		wantNoLeftovers(t, mnt, filepath.Join(dir, "state"))
	})

	t.Run("copy", func(t *testing.T) {
		mnt := testutil.MountExt4(t, 64)
		dir := t.TempDir()
		path := filepath.Join(mnt, "events.ndjson")
		writeFile(t, path, data)
		testutil.FillDisk(t, mnt, 512<<10)
		id := statID(t, path)
		cfg := writeConfig(t, dir, inplaceTarget(path, keep, "copy"))

		r := runWatcher(t, 2*time.Minute, "compact", "--config", cfg, "--json")
		if r.Code == 0 {
			t.Fatalf("compact with method = copy on a full filesystem succeeded; it cannot write %d bytes of survivors:\n%s", len(want), r)
		}
		reps := parseReports(t, r.Stdout)
		if len(reps) != 1 || reps[0].Error == "" {
			t.Fatalf("want one report with an error, got\n%s", r)
		}
		t.Logf("copy on a full disk: exit %d, error %q", r.Code, reps[0].Error)
		// The free-space check refuses the copy before it writes anything,
		// and says what it needs, what is free and where.
		if e := reps[0].Error; !strings.Contains(e, "needs") || !strings.Contains(e, "free") || !strings.Contains(e, mnt) {
			t.Errorf("the error does not say what the copy needs, what is free and where (%s): %q", mnt, e)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("the file changed after a failed copy (%d bytes, was %d)", len(got), len(data))
		}
		if statID(t, path) != id {
			t.Errorf("the file's inode, size or mtime changed after a failed copy")
		}
		wantNoLeftovers(t, mnt, filepath.Join(dir, "state"))
	})
}

// TestInPlaceFullDiskRotating: the same full 64 MB ext4 for a rotating
// set of 45 MB: `watcher compact` (the default method) unlinks the two
// oldest segments, cuts the head of the next in place, exits 0, and the set
// read oldest first is one filler line and exactly the newest records; the
// space comes back.
func TestInPlaceFullDiskRotating(t *testing.T) {
	const n, keep, pad = 100_000, 40_000, 300
	data := genRecords(0, n, 1795599000, pad)
	lines := splitLines(data)
	want := bytes.Join(lines[n-keep:], nil)

	mnt := testutil.MountExt4(t, 64)
	dir := t.TempDir()
	active := filepath.Join(mnt, "audit.log")
	// Four files of 25,000 records, oldest .3; the newest 40,000 are kept:
	// .3 and .2 go whole, .1 loses its first 10,000.
	for i := range 4 {
		p := active
		if i < 3 {
			p = fmt.Sprintf("%s.%d", active, 3-i)
		}
		writeFile(t, p, bytes.Join(lines[i*25_000:(i+1)*25_000], nil))
	}
	testutil.FillDisk(t, mnt, 512<<10)
	before := testutil.Available(t, mnt)
	if before > 512<<10 {
		t.Fatalf("the filesystem is not full: %d bytes available", before)
	}
	cfg := writeConfig(t, dir, baseConfig+fmt.Sprintf(`
[[target]]
name = "audit"
backend = "rotating"
path = %q
max_bytes = %d
max_files = 5
[target.retention]
max_records = %d
`, active, 16<<20, keep))

	r := runWatcher(t, 2*time.Minute, "compact", "--config", cfg, "--json")
	wantCode(t, r, 0, "compact a rotating set in place on a full filesystem")
	reps := parseReports(t, r.Stdout)
	mreps := parseMethodReports(t, r.Stdout)
	if len(reps) != 1 || reps[0].Error != "" || mreps[0].Method != "in_place" {
		t.Fatalf("want one successful in_place report, got %s", r.Stdout)
	}
	if reps[0].BeforeRecords != n || reps[0].AfterRecords != keep {
		t.Errorf("report counts %d → %d records, want %d → %d", reps[0].BeforeRecords, reps[0].AfterRecords, n, keep)
	}
	// The set, oldest first.
	var got []byte
	for i := 4; i >= 0; i-- {
		p := active
		if i > 0 {
			p = fmt.Sprintf("%s.%d", active, i)
		}
		b, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 {
			b, _ = stripFiller(b)
		}
		got = append(got, b...)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("the set read oldest first is not one filler line and the newest %d records: %s", keep, firstDifference(got, want))
	}
	if _, err := os.Stat(active + ".3"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s.3 still exists: the numbering must stay contiguous (%v)", active, err)
	}
	after := testutil.Available(t, mnt)
	if dropped := int64(len(data) - len(want)); after-before < dropped-(1<<20) {
		t.Errorf("free space grew by %d bytes; %d were dropped", after-before, dropped)
	}
	wantNoLeftovers(t, mnt, filepath.Join(dir, "state"))
}

// firstDifference describes where got and want first differ.
func firstDifference(got, want []byte) string {
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	lo := max(0, i-60)
	return fmt.Sprintf("first difference at byte %d:\ngot:  %q\nwant: %q", i, got[lo:min(len(got), i+60)], want[lo:min(len(want), i+60)])
}

// TestInPlaceTmpfsFallsBack: tmpfs cannot collapse a range, so the same
// compaction runs as a copy there, gives exactly the rewrite's result and
// says why in a note.
func TestInPlaceTmpfsFallsBack(t *testing.T) {
	const n, keep = 20_000, 10_000
	mnt := mountTmpfs(t, 64)
	dir := t.TempDir()
	path := filepath.Join(mnt, "events.ndjson")
	data := genRecords(0, n, 1795599000, 300)
	writeFile(t, path, data)
	lines := splitLines(data)
	want := bytes.Join(lines[n-keep:], nil)
	cfg := writeConfig(t, dir, inplaceTarget(path, keep, ""))

	r := runWatcher(t, time.Minute, "compact", "--config", cfg, "--json")
	wantCode(t, r, 0, "compact on tmpfs")
	reps := parseReports(t, r.Stdout)
	mreps := parseMethodReports(t, r.Stdout)
	if len(reps) != 1 || reps[0].Error != "" {
		t.Fatalf("want one successful report, got %s", r.Stdout)
	}
	if mreps[0].Method != "copy" {
		t.Errorf("method %q on tmpfs, want copy", mreps[0].Method)
	}
	noted := false
	for _, note := range mreps[0].Notes {
		noted = noted || strings.Contains(note, "cannot collapse")
	}
	if !noted {
		t.Errorf("no note says the filesystem cannot collapse: %q", mreps[0].Notes)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, want) {
		t.Errorf("after the copy on tmpfs the file (%d bytes) is not the newest %d records (%d bytes)", len(got), keep, len(want))
	}
	wantNoLeftovers(t, mnt, filepath.Join(dir, "state"))
}

// ipKeep is the live-writer test's max_records.
const ipKeep = 20_000

// TestInPlaceLiveWriterKill: a Papyra-style writer appends numbered records
// (open O_APPEND, one write, close) to a file on ext4 while `watcher run`
// compacts it in place again and again (growth and retention triggers with
// small thresholds); the daemon is SIGKILLed 30 times, at a random
// instant or just after a compaction shrank the file (the kill then often
// lands while the cut is journaled, and sometimes between the collapse and
// the filler, leaving the torn tail of a dropped record first), and
// restarted, so that Recover repairs what the kill interrupted. After each restart the file must be one run of
// consecutive records, whole and in order, holding at least the newest
// max_records; at the end (writer stopped, daemon stopped, one last
// `watcher compact`) it must be at most one filler line and exactly the
// newest max_records records, which Papyra's reader returns and its scan
// accepts.
//
// WATCHER_INPLACE_CRASH_ROUNDS (default 30) sets the kills;
// WATCHER_CRASH_SEED replays the random draws (not the timing).
func TestInPlaceLiveWriterKill(t *testing.T) {
	rounds := envInt(t, "WATCHER_INPLACE_CRASH_ROUNDS", 30)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("WATCHER_CRASH_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("WATCHER_CRASH_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("WATCHER_CRASH_SEED=%d rounds=%d", seed, rounds)
	rng := rand.New(rand.NewPCG(seed, 21))

	mnt := testutil.MountExt4(t, 256)
	dir := t.TempDir()
	path := filepath.Join(mnt, "events.ndjson")
	state := filepath.Join(dir, "state")
	addr := freeAddr(t)
	cfg := writeConfig(t, dir, fmt.Sprintf(`[watcher]
state_dir = %q
http_listen = %q
log_level = "info"

[policy]
debounce = "50ms"
max_wait = "200ms"
cooldown = "0s"
rate = 100000
burst = 1000
partial_line_grace = "876000h"

[triggers.timer]
interval = "0s"

[triggers.growth]
min_bytes = 262144
min_ratio = 0.0

[triggers.disk]
interval = "1h"
high_percent = 100
low_percent = 99.9
predict_horizon = "0s"

[triggers.retention]
interval = "100ms"
min_reclaimable_ratio = 0.01
min_reclaimable_bytes = 65536

[[target]]
name = "events"
backend = "json"
path = %q
[target.retention]
max_records = %d
`, state, addr, path, ipKeep))

	// About Papyra's pace under load: ~10,000 records a second (opens keep
	// coming while the daemon asks for the write lease), slow enough for a
	// daemon built with the race detector (WATCHER_IT_RACE=1) to keep up.
	w := startCLWWriterPaced(path, 0, 0, 16)
	defer func() {
		if !w.stop.Load() {
			w.finish(t)
		}
	}()
	eventually(t, 30*time.Second, "the writer fills the retained window", func() (bool, string) {
		return w.written.Load() >= ipKeep, fmt.Sprint(w.written.Load())
	})

	var logs []string // stderr of the killed daemons
	d := startDaemon(t, cfg, addr)
	d.WaitReady(15 * time.Second)
	var aimed, random, journaled, tornHeads int
	for round := range rounds {
		if round%2 == 0 {
			// At a random instant.
			random++
			time.Sleep(time.Duration(rng.Int64N(int64(1500 * time.Millisecond))))
		} else {
			// Just after a compaction shrank the file: the cut may still be
			// journaled, the filler not yet written.
			aimed++
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			last := fi.Size()
			deadline := time.Now().Add(30 * time.Second)
			for {
				fi, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Size() < last {
					break
				}
				last = fi.Size()
				if time.Now().After(deadline) {
					t.Fatalf("round %d: no compaction shrank the file within 30 s\n%s", round, d.Stderr())
				}
				// Polled without sleeping: the cut's journaled window
				// (collapse, filler, fsync, journal removed) is about a
				// millisecond.
			}
			if rng.IntN(2) == 0 {
				time.Sleep(time.Duration(rng.Int64N(int64(time.Millisecond))))
			}
		}
		d.Signal(syscall.SIGKILL)
		d.Wait(10 * time.Second)
		logs = append(logs, d.Stderr())
		if headCutJournaled(t, state) {
			journaled++
			// Between the collapse and the filler the file starts with the
			// tail of a dropped record: Recover must repair that.
			if torn, err := ipTornHead(path); err != nil {
				t.Fatal(err)
			} else if torn {
				tornHeads++
			}
		}
		d = startDaemon(t, cfg, addr)
		d.WaitReady(15 * time.Second)
		// Recover has run: the head is repaired unless the writer kept it
		// from taking the lease (then the journal is still there).
		ipCheck(t, w, state, fmt.Sprintf("round %d, after the restart", round), false)
	}

	// The last compaction, with the writer stopped.
	written := w.finish(t)
	d.StopClean()
	logs = append(logs, d.Stderr())
	r := runWatcher(t, 2*time.Minute, "compact", "--config", cfg, "--json")
	wantCode(t, r, 0, "the last compaction")
	reps := parseReports(t, r.Stdout)
	if len(reps) != 1 || reps[0].Error != "" {
		t.Fatalf("the last compaction: %s", r)
	}
	got := ipCheck(t, w, state, "final", true)
	rest, filler := stripFiller(got)
	var want, buf []byte
	for seq := written - ipKeep; seq < written; seq++ {
		buf = clwLine(buf, seq)
		want = append(want, buf...)
	}
	if !bytes.Equal(rest, want) {
		t.Fatalf("final: the file (%d bytes, filler %d) is not the newest %d of %d records: %s", len(got), filler, ipKeep, written, firstDifference(rest, want))
	}
	if e := papyraScanErrors(got); len(e) > 0 {
		t.Errorf("final: Papyra's scan would report %q", e)
	}
	if recs := papyraRecords(got); len(recs) != ipKeep {
		t.Errorf("final: Papyra's reader returns %d records, want %d", len(recs), ipKeep)
	}
	wantNoLeftovers(t, mnt, state)
	if headCutJournaled(t, state) {
		t.Errorf("final: an in-place journal is left in %s", state)
	}

	all := strings.Join(logs, "")
	var inPlace, copied, failed int
	for line := range strings.Lines(all) {
		switch {
		case strings.Contains(line, "msg=compaction ") && strings.Contains(line, "method=in_place"):
			inPlace++
		case strings.Contains(line, "msg=compaction ") && strings.Contains(line, "method=copy"):
			copied++
		case strings.Contains(line, `msg="compaction failed"`):
			failed++
		}
	}
	t.Logf("%d records written; %d kills (%d at random, %d just after a shrink; %d left a journaled cut, %d of them a torn head); the daemons compacted %d times in place, %d times by copy, %d failures",
		written, aimed+random, random, aimed, journaled, tornHeads, inPlace, copied, failed)
	if inPlace == 0 {
		t.Errorf("no compaction ran in place: the test does not exercise what it should\n%s", all)
	}
	if failed > 0 {
		for line := range strings.Lines(all) {
			if strings.Contains(line, `msg="compaction failed"`) {
				t.Logf("failed: %s", strings.TrimSpace(line))
			}
		}
	}
}

// ipCheck reads the target with the writer held between two records and
// checks that it is at most one filler line (first) and then one run of
// consecutive records, each exactly as written, holding at least the newest
// ipKeep of those written; it returns the file. Unless final, the first
// line may also be the torn tail of a dropped record when a journaled cut
// is still pending in state (the writer kept Recover from taking the
// lease).
func ipCheck(t *testing.T, w *clwWriter, state, when string, final bool) []byte {
	t.Helper()
	// A torn head can only be left by a kill, and only Recover or the next
	// compaction removes it (with the journal): none can appear while this
	// runs, so the journal is looked for before the read.
	pending := headCutJournaled(t, state)
	w.mu.Lock()
	hi := w.written.Load()
	data, err := os.ReadFile(w.path)
	w.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	rest, _ := stripFiller(data)
	lines := splitLines(rest)
	if len(lines) > 0 && !final && pending {
		var scratch []byte
		if _, ok := ipSeq(lines[0], &scratch); !ok {
			t.Logf("%s: the first line is not a record (a pending cut?): %q", when, clipBytes(lines[0], 80))
			lines = lines[1:]
		}
	}
	var scratch []byte
	first, prev := int64(-1), int64(-1)
	for i, line := range lines {
		seq, ok := ipSeq(line, &scratch)
		if !ok {
			t.Fatalf("%s: line %d of %d is not one whole record: %q", when, i+1, len(lines), clipBytes(line, 120))
		}
		if prev >= 0 && seq != prev+1 {
			t.Fatalf("%s: record %d follows record %d (line %d): a record is missing, duplicated or out of order", when, seq, prev, i+1)
		}
		if first < 0 {
			first = seq
		}
		prev = seq
	}
	// The writer counts a record after it releases mu: the file may hold
	// one more than counted.
	if prev+1 != hi && prev != hi {
		t.Fatalf("%s: the file ends with record %d; %d records were written", when, prev, hi)
	}
	if first > max(0, hi-ipKeep) {
		t.Fatalf("%s: the file starts at record %d; the newest %d of %d (from %d) must be kept", when, first, ipKeep, hi, hi-ipKeep)
	}
	return data
}

// ipTornHead reports whether the file at path starts with something that
// is neither a filler line nor one whole record.
func ipTornHead(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	n, _ := f.Read(buf)
	line := buf[:n]
	if i := bytes.IndexByte(line, '\n'); i >= 0 {
		line = line[:i+1]
	}
	var scratch []byte
	_, ok := ipSeq(line, &scratch)
	return !ok && !ndjson.IsFiller(line), nil
}

// ipSeq returns the sequence number of line when it is exactly record seq
// as clwLine writes it.
func ipSeq(line []byte, scratch *[]byte) (int64, bool) {
	const key = `"payload": {"seq": `
	i := bytes.Index(line, []byte(key))
	if i < 0 {
		return 0, false
	}
	rest := line[i+len(key):]
	j := bytes.IndexByte(rest, ',')
	if j < 0 {
		return 0, false
	}
	seq, err := strconv.ParseInt(string(rest[:j]), 10, 64)
	if err != nil || seq < 0 {
		return 0, false
	}
	*scratch = clwLine(*scratch, seq)
	return seq, bytes.Equal(line, *scratch)
}
