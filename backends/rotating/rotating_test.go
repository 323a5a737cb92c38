package rotating

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
	"github.com/papyra/watcher/backends/ndjson"
)

// ---- helpers ----

type rotSet struct {
	dir, path, state string
	maxBytes         int64
	maxFiles         int
	// method is the configured method: copy unless a test says otherwise,
	// since most tests here check the copy's files byte for byte (the
	// in-place tests are in inplace_test.go).
	method string
}

func newRotSet(t *testing.T, maxBytes int64, maxFiles int) *rotSet {
	dir := t.TempDir()
	return &rotSet{dir: dir, path: filepath.Join(dir, "papyra.log"), state: filepath.Join(t.TempDir(), "state"), maxBytes: maxBytes, maxFiles: maxFiles, method: backends.MethodCopy}
}

func (s *rotSet) backend(t *testing.T) *Set {
	t.Helper()
	b, err := New(Config{Name: "t", Path: s.path, MaxBytes: s.maxBytes, MaxFiles: s.maxFiles, StateDir: s.state, Method: s.method})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// write puts files[i] at index i (nil: absent).
func (s *rotSet) write(t *testing.T, files map[int]string) {
	t.Helper()
	for i, c := range files {
		if err := os.WriteFile(segName(s.path, i), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// layout returns every entry of the set's directory: name → content.
func (s *rotSet) layout(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for n, b := range rotReadDir(t, s.dir) {
		out[n] = string(b)
	}
	return out
}

// content is the set read oldest first.
func (s *rotSet) content(t *testing.T) string {
	var b strings.Builder
	for i := s.maxFiles - 1; i >= 0; i-- {
		c, err := os.ReadFile(segName(s.path, i))
		if err == nil {
			b.Write(c)
		}
	}
	return b.String()
}

func rec(seq int, ts float64) string {
	return fmt.Sprintf(`{"kind":"event","system_id":"s","actor_address":"a","event_type":"e","payload":{"n":%d},"timestamp":%v}`+"\n", seq, ts)
}

func sameLayout(t *testing.T, got, want map[string]string) {
	t.Helper()
	g := map[string][]byte{}
	w := map[string][]byte{}
	for k, v := range got {
		g[k] = []byte(v)
	}
	for k, v := range want {
		w[k] = []byte(v)
	}
	rotCompareDirs(t, g, w)
}

// ---- model of Papyra's compaction ----

// rotModel computes the expected files (index → content) of a compaction of
// files (index → content), as Papyra does it but keeping stored bytes.
func rotModel(files map[int]string, maxBytes int64, maxFiles int, r backends.Retention, now time.Time) map[int]string {
	type line struct {
		b  []byte // with '\n'
		ts float64
		ok bool // has timestamp
	}
	var recs []line
	for i := maxFiles - 1; i >= 0; i-- {
		c, ok := files[i]
		if !ok {
			continue
		}
		parts := strings.SplitAfter(c, "\n")
		for _, p := range parts {
			if p == "" {
				continue
			}
			content := strings.TrimSuffix(p, "\n")
			info := ndjson.ClassifyLine([]byte(content))
			if !info.Record {
				continue
			}
			recs = append(recs, line{b: []byte(content + "\n"), ts: info.Timestamp, ok: info.HasTimestamp})
		}
	}
	if r.MaxAgeSeconds != nil {
		cutoff := backends.UnixSeconds(now) - *r.MaxAgeSeconds
		var k []line
		for _, l := range recs {
			if l.ok && !(l.ts < cutoff) {
				k = append(k, l)
			}
		}
		recs = k
	}
	if r.MaxRecords != nil && int64(len(recs)) > *r.MaxRecords {
		recs = recs[int64(len(recs))-*r.MaxRecords:]
	}
	if r.MaxTotalBytes != nil {
		var total int64
		i := len(recs)
		for i > 0 && total+int64(len(recs[i-1].b)) <= *r.MaxTotalBytes {
			total += int64(len(recs[i-1].b))
			i--
		}
		recs = recs[i:]
	}
	var chunks [][]byte
	var cur []byte
	for _, l := range recs {
		if len(cur) > 0 && int64(len(cur)+len(l.b)) > maxBytes {
			chunks = append(chunks, cur)
			cur = nil
		}
		cur = append(cur, l.b...)
	}
	if len(cur) > 0 {
		chunks = append(chunks, cur)
	}
	if len(chunks) > maxFiles {
		chunks = chunks[len(chunks)-maxFiles:]
	}
	out := map[int]string{}
	for ci, ch := range chunks {
		out[len(chunks)-1-ci] = string(ch)
	}
	if len(out) == 0 && len(files) > 0 {
		out[0] = "" // an empty active file
	}
	return out
}

func randLine(rng *rand.Rand, seq int, now float64) string {
	switch rng.IntN(14) {
	case 0:
		return "\n"
	case 1:
		return "not json at all\n"
	case 2:
		return "[1,2,3]\n"
	case 3:
		return `{"kind":"audit","system_id":"s"}` + "\n" // no timestamp
	case 4:
		return `{"kind":"event","timestamp":"soon","n":` + fmt.Sprint(seq) + "}\n"
	case 5:
		return `  {"kind":"mystery","timestamp":` + fmt.Sprint(now-float64(rng.IntN(600))) + `,"payload":{"timestamp":1}}  ` + "\n"
	case 6:
		return fmt.Sprintf(`{"kind":"event","timestamp":%v,"big":"%s"}`+"\n", now-float64(rng.IntN(600)), strings.Repeat("x", rng.IntN(700)))
	default:
		return rec(seq, now-float64(rng.IntN(600)))
	}
}

// ---- tests ----

func TestRotatingConfigValidation(t *testing.T) {
	ok := Config{Name: "x", Path: "/tmp/x.log", MaxBytes: 1, MaxFiles: 1, StateDir: "/tmp/s"}
	if _, err := New(ok); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		mut  func(*Config)
		want string
	}{
		{func(c *Config) { c.Path = "" }, "path is empty"},
		{func(c *Config) { c.Path = "rel.log" }, "not absolute"},
		{func(c *Config) { c.MaxBytes = 0 }, "max_bytes"},
		{func(c *Config) { c.MaxFiles = 0 }, "max_files must be >= 1"},
		{func(c *Config) { c.MaxFiles = 10001 }, "max_files must be <= 10000"},
		{func(c *Config) { c.StateDir = "" }, "state directory"},
	} {
		c := ok
		tc.mut(&c)
		_, err := New(c)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("got %v, want error containing %q", err, tc.want)
		}
	}
}

func TestRotatingProperty(t *testing.T) {
	old := ndjson.BlockSize
	ndjson.BlockSize = 256 // push lines across block boundaries
	defer func() { ndjson.BlockSize = old }()
	rng := rand.New(rand.NewPCG(1, 2))
	now := 1795600000.0
	iters := 60
	if testing.Short() {
		iters = 40
	}
	for it := 0; it < iters; it++ {
		method := backends.MethodCopy
		if it%2 == 1 {
			method = backends.MethodAuto
		}
		maxFiles := 1 + rng.IntN(6)
		maxBytes := int64(50 + rng.IntN(2000))
		s := newRotSet(t, maxBytes, maxFiles)
		files := map[int]string{}
		seq := 0
		for i := 0; i < maxFiles; i++ {
			if rng.IntN(5) == 0 {
				continue // a gap in the set
			}
			var b strings.Builder
			for n := rng.IntN(30); n > 0; n-- {
				b.WriteString(randLine(rng, seq, now))
				seq++
			}
			if rng.IntN(6) == 0 { // an unterminated last line
				l := strings.TrimSuffix(randLine(rng, seq, now), "\n")
				if rng.IntN(2) == 0 && len(l) > 3 {
					l = l[:len(l)/2]
				}
				b.WriteString(l)
				seq++
			}
			files[i] = b.String()
		}
		if rng.IntN(3) == 0 { // an orphan
			files[maxFiles+1] = rec(999, now)
		}
		var ret backends.Retention
		if rng.IntN(2) == 0 {
			v := int64(rng.IntN(60))
			ret.MaxRecords = &v
		}
		if rng.IntN(3) == 0 {
			v := float64(rng.IntN(700))
			ret.MaxAgeSeconds = &v
		}
		if rng.IntN(3) == 0 {
			v := int64(rng.IntN(6000))
			ret.MaxTotalBytes = &v
		}
		s.write(t, files)
		inSet := map[int]string{}
		for i, c := range files {
			if i < maxFiles {
				inSet[i] = c
			}
		}
		want := rotModel(inSet, maxBytes, maxFiles, ret, rotUnixTime(now))
		wantLayout := map[string]string{}
		for i, c := range want {
			wantLayout[filepath.Base(segName(s.path, i))] = c
		}
		if c, ok := files[maxFiles+1]; ok {
			wantLayout[filepath.Base(segName(s.path, maxFiles+1))] = c
		}
		before := s.layout(t)
		s.method = method
		b := s.backend(t)
		opts := backends.CompactOptions{Retention: ret, Now: rotUnixTime(now), PartialLineGrace: time.Nanosecond}
		dry := opts
		dry.DryRun = true
		drep, err := b.Compact(context.Background(), dry)
		if err != nil {
			t.Fatalf("iteration %d: dry run: %v", it, err)
		}
		sameLayout(t, s.layout(t), before)
		rep, err := b.Compact(context.Background(), opts)
		if err != nil {
			t.Fatalf("iteration %d: %v", it, err)
		}
		// copy: the model's files byte for byte; auto: its records, in
		// order, whichever method ran.
		checkLayout := func() {
			if method == backends.MethodCopy {
				sameLayout(t, s.layout(t), wantLayout)
				return
			}
			got, want := map[string][]byte{}, map[string][]byte{}
			for k, v := range s.layout(t) {
				got[k] = []byte(v)
			}
			for k, v := range wantLayout {
				want[k] = []byte(v)
			}
			rotSameRecords(t, rotRecordsOf(t, got, "papyra.log", maxFiles), rotRecordsOf(t, want, "papyra.log", maxFiles))
			if o := filepath.Base(segName(s.path, maxFiles+1)); got[o] != nil && string(got[o]) != files[maxFiles+1] {
				t.Errorf("the orphan %s changed", o)
			}
		}
		checkLayout()
		if rep.Method != drep.Method {
			t.Errorf("iteration %d: method %q, the dry run said %q", it, rep.Method, drep.Method)
		}
		var wantRecords int64
		for _, c := range want {
			wantRecords += int64(strings.Count(c, "\n"))
		}
		if rep.AfterRecords != wantRecords || drep.AfterRecords != wantRecords {
			t.Errorf("iteration %d: after_records %d (dry %d), want %d", it, rep.AfterRecords, drep.AfterRecords, wantRecords)
		}
		if rep.BeforeRecords != drep.BeforeRecords || rep.Dropped != drep.Dropped {
			t.Errorf("iteration %d: dry run report differs: %+v vs %+v", it, drep, rep)
		}
		if t.Failed() {
			t.Fatalf("iteration %d: method %s (ran %s) maxBytes=%d maxFiles=%d retention=%+v files=%v", it, method, rep.Method, maxBytes, maxFiles, ret, files)
		}
		// A second compaction of a compacted set changes nothing.
		if _, err := b.Compact(context.Background(), backends.CompactOptions{Now: rotUnixTime(now)}); err != nil {
			t.Fatal(err)
		}
		checkLayout()
	}
}

// rotFileID is what a dry run must not change.
type rotFileID struct {
	size  int64
	mtime time.Time
	ino   uint64
	mode  os.FileMode
}

func rotIDs(t *testing.T, dir string) map[string]rotFileID {
	t.Helper()
	out := map[string]rotFileID{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		fi, err := os.Lstat(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = rotFileID{fi.Size(), fi.ModTime(), fi.Sys().(*syscall.Stat_t).Ino, fi.Mode()}
	}
	return out
}

func TestRotatingDryRunChangesNothing(t *testing.T) {
	s := newRotSet(t, 300, 4)
	var a, one string
	for i := 0; i < 20; i++ {
		one += rec(i, 1000)
	}
	for i := 20; i < 25; i++ {
		a += rec(i, 1000)
	}
	s.write(t, map[int]string{0: a, 1: one + "garbage\n"})
	old := time.Now().Add(-time.Hour)
	os.Chtimes(s.path, old, old)
	before := rotIDs(t, s.dir)
	n := int64(3)
	rep, err := s.backend(t).Compact(context.Background(), backends.CompactOptions{Retention: backends.Retention{MaxRecords: &n}, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	// The garbage line lies beyond the cut: unread, it is not shaped like a
	// record, so it is counted invalid, and before_records is Papyra's 25.
	if !rep.DryRun || rep.AfterRecords != 3 || rep.BeforeRecords != 25 || rep.Dropped.Unexamined != 21 || rep.Dropped.Invalid != 1 {
		t.Errorf("report %+v", rep)
	}
	after := rotIDs(t, s.dir)
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("dry run changed the directory:\n%v\n%v", before, after)
	}
	if _, err := os.Stat(s.state); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dry run created the state directory: %v", err)
	}
}

func TestRotatingMissingSet(t *testing.T) {
	s := newRotSet(t, 100, 3)
	rep, err := s.backend(t).Compact(context.Background(), backends.CompactOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.BeforeRecords != 0 || *rep.AfterBytes != 0 {
		t.Errorf("report %+v", rep)
	}
	if l := s.layout(t); len(l) != 0 {
		t.Errorf("files created: %v", l)
	}
	st, err := s.backend(t).Stat(context.Background())
	if err != nil || st.Bytes != 0 || len(st.Files) != 0 {
		t.Errorf("stat %+v %v", st, err)
	}
}

func TestRotatingNothingSurvives(t *testing.T) {
	s := newRotSet(t, 100, 3)
	s.write(t, map[int]string{0: rec(1, 1), 2: rec(0, 1)})
	zero := int64(0)
	rep, err := s.backend(t).Compact(context.Background(), backends.CompactOptions{Retention: backends.Retention{MaxRecords: &zero}})
	if err != nil {
		t.Fatal(err)
	}
	sameLayout(t, s.layout(t), map[string]string{"papyra.log": ""})
	if rep.AfterRecords != 0 || rep.BeforeRecords != 2 || rep.RemovedRecords != 2 {
		t.Errorf("report %+v", rep)
	}
}

func TestRotatingStat(t *testing.T) {
	s := newRotSet(t, 100, 3)
	s.write(t, map[int]string{0: "ab\n", 2: "abcd\n", 5: "orphan\n"})
	st, err := s.backend(t).Stat(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Bytes != 8 || len(st.Files) != 2 || st.Files[0] != s.path+".2" || st.Files[1] != s.path || st.ModTime.IsZero() {
		t.Errorf("stat %+v", st)
	}
}

func TestRotatingSymlink(t *testing.T) {
	s := newRotSet(t, 100, 3)
	real := filepath.Join(s.dir, "real.log")
	os.WriteFile(real, []byte(rec(1, 1)), 0o644)
	os.Symlink(real, s.path)
	_, err := s.backend(t).Compact(context.Background(), backends.CompactOptions{})
	if !errors.Is(err, backends.ErrSymlink) {
		t.Fatalf("got %v, want ErrSymlink", err)
	}
	b, err := New(Config{Name: "t", Path: s.path, MaxBytes: 100, MaxFiles: 3, StateDir: s.state, FollowSymlinks: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Compact(context.Background(), backends.CompactOptions{}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(s.path); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the link was replaced: %v", err)
	}
	// A segment that is a link is refused too.
	s2 := newRotSet(t, 100, 3)
	s2.write(t, map[int]string{0: rec(1, 1)})
	os.Symlink(real, s2.path+".1")
	if _, err := s2.backend(t).Compact(context.Background(), backends.CompactOptions{}); !errors.Is(err, backends.ErrSymlink) {
		t.Fatalf("segment link: got %v", err)
	}
}

func TestRotatingCancelCleansUp(t *testing.T) {
	s := newRotSet(t, 200, 4)
	var a string
	for i := 0; i < 200; i++ {
		a += rec(i, 1)
	}
	s.write(t, map[int]string{0: a})
	before := s.layout(t)
	ctx, cancel := context.WithCancel(context.Background())
	_, err := s.backend(t).Compact(ctx, backends.CompactOptions{Progress: func(done, total int64) { cancel() }})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	sameLayout(t, s.layout(t), before)
	s.noStateLeft(t)
}

func (s *rotSet) noStateLeft(t *testing.T) {
	t.Helper()
	entries, _ := os.ReadDir(s.state)
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".journal") || strings.Contains(e.Name(), fsx.TempMarker) {
			t.Errorf("state leftover %s", e.Name())
		}
	}
}

func TestRotatingWaitIOAndProgress(t *testing.T) {
	s := newRotSet(t, 1000, 20)
	var a string
	for i := 0; i < 100; i++ {
		a += rec(i, 1)
	}
	s.write(t, map[int]string{0: a})
	var waited, lastDone, lastTotal int64
	rep, err := s.backend(t).Compact(context.Background(), backends.CompactOptions{
		WaitIO:   func(ctx context.Context, n int) error { waited += int64(n); return nil },
		Progress: func(done, total int64) { lastDone, lastTotal = done, total },
	})
	if err != nil {
		t.Fatal(err)
	}
	if waited < *rep.AfterBytes {
		t.Errorf("WaitIO saw %d bytes, wrote %d", waited, *rep.AfterBytes)
	}
	if lastDone == 0 || lastDone > lastTotal {
		t.Errorf("progress %d/%d", lastDone, lastTotal)
	}
	if got := s.content(t); got != a {
		t.Errorf("content changed")
	}
}

func TestRotatingAppendsDuringCompaction(t *testing.T) {
	s := newRotSet(t, 400, 3)
	var a, one string
	for i := 0; i < 6; i++ {
		one += rec(i, 1)
	}
	for i := 6; i < 10; i++ {
		a += rec(i, 1)
	}
	s.write(t, map[int]string{0: a, 1: one})
	appendActive := func(seq int) {
		f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Error(err)
			return
		}
		f.WriteString(rec(seq, 1))
		f.Close()
	}
	// One record lands before the catch-up (copied by it), one after it
	// (drained after the swap).
	once := false
	fsx.SetCrashHook(func(point string) error {
		if point == "caught-up" {
			appendActive(11)
		}
		return nil
	})
	defer func() { fsx.SetCrashHook(nil) }()
	n := int64(5)
	rep, err := s.backend(t).Compact(context.Background(), backends.CompactOptions{
		Retention: backends.Retention{MaxRecords: &n},
		Progress: func(done, total int64) {
			if !once {
				once = true
				appendActive(10)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	var want string
	for i := 5; i < 12; i++ {
		want += rec(i, 1)
	}
	if got := s.content(t); got != want {
		t.Errorf("content\n got %q\nwant %q", got, want)
	}
	if rep.AppendedDuring != 2 || rep.AfterRecords != 7 || rep.BeforeRecords != 12 {
		t.Errorf("report %+v", rep)
	}
	s.noStateLeft(t)
}

// TestRotatingDrainWaitsForStalledWriter: a writer that opened the active
// file before the swap stalls for several times the quiet window, then
// writes its record. The drain sees that the old active file is still open
// for writing and waits for it instead of ending on quiet: the record is in
// the new active file, once.
func TestRotatingDrainWaitsForStalledWriter(t *testing.T) {
	s := newRotSet(t, 400, 3)
	var a, one string
	for i := 0; i < 6; i++ {
		one += rec(i, 1)
	}
	for i := 6; i < 10; i++ {
		a += rec(i, 1)
	}
	s.write(t, map[int]string{0: a, 1: one})
	w, err := os.OpenFile(s.path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	wrote := make(chan error, 1)
	active := "install:" + filepath.Base(s.path)
	restore := fsx.SetCrashHook(func(point string) error {
		if point == active {
			go func() {
				time.Sleep(4 * rotDrainQuiet) // far past the quiet window
				_, err := w.WriteString(rec(10, 1))
				if cerr := w.Close(); err == nil {
					err = cerr
				}
				wrote <- err
			}()
		}
		return nil
	})
	defer restore()
	n := int64(5)
	rep, err := s.backend(t).Compact(context.Background(), backends.CompactOptions{
		Retention: backends.Retention{MaxRecords: &n},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	var want string
	for i := 5; i < 11; i++ {
		want += rec(i, 1)
	}
	if got := s.content(t); got != want {
		t.Errorf("the stalled writer's record is lost or twice (report %+v)\n got %q\nwant %q", rep, got, want)
	}
	s.noStateLeft(t)
}

func TestRotatingConcurrentRotation(t *testing.T) {
	old := rotRetries
	rotRetries = 0
	defer func() { rotRetries = old }()
	s := newRotSet(t, 300, 5)
	s.write(t, map[int]string{0: rec(3, 1), 1: rec(2, 1), 2: rec(1, 1)})
	var afterRotation map[string]string
	fsx.SetCrashHook(func(point string) error {
		if point == "staged" {
			// The writer rotates (a rotation that was in flight when the
			// placeholder appeared).
			os.Rename(segName(s.path, 2), segName(s.path, 3))
			os.Rename(segName(s.path, 1), segName(s.path, 2))
			os.Rename(s.path, segName(s.path, 1))
			os.WriteFile(s.path, []byte(rec(4, 1)), 0o644)
			afterRotation = s.layout(t)
		}
		return nil
	})
	defer func() { fsx.SetCrashHook(nil) }()
	_, err := s.backend(t).Compact(context.Background(), backends.CompactOptions{})
	if !errors.Is(err, backends.ErrConcurrentRotation) {
		t.Fatalf("got %v, want ErrConcurrentRotation", err)
	}
	// Everything staged, the placeholder and the journal are gone; the
	// writer's files are as it left them.
	delete(afterRotation, "papyra.log.4")
	for k := range afterRotation {
		if strings.HasPrefix(k, ".papyra.log.watcher-rot-") {
			delete(afterRotation, k)
		}
	}
	sameLayout(t, s.layout(t), afterRotation)
	s.noStateLeft(t)
	// Retried without interference, it succeeds.
	fsx.SetCrashHook(nil)
	if _, err := s.backend(t).Compact(context.Background(), backends.CompactOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, want := s.content(t), rec(1, 1)+rec(2, 1)+rec(3, 1)+rec(4, 1); got != want {
		t.Errorf("content %q", got)
	}
}

func TestRotatingBusy(t *testing.T) {
	s := newRotSet(t, 300, 3)
	s.write(t, map[int]string{0: rec(1, 1)})
	b := s.backend(t)
	state, err := fsx.OpenStateDir(s.state)
	if err != nil {
		t.Fatal(err)
	}
	defer state.Close()
	lock, err := state.TryLock(b.lockName(s.path))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Unlock()
	if _, err := b.Compact(context.Background(), backends.CompactOptions{}); !errors.Is(err, backends.ErrBusy) {
		t.Fatalf("got %v, want ErrBusy", err)
	}
}

// ---- crash tests ----

// crashFixture builds the same set every time: 3 segments and an active
// file of a set of 5, compacted with a count limit so that the new set has
// fewer files (old segments are removed) and a placeholder is used.
func crashFixture(t *testing.T) *rotSet {
	s := newRotSet(t, 500, 5)
	files := map[int]string{}
	seq := 0
	for i := 3; i >= 0; i-- {
		var b string
		for n := 0; n < 4; n++ {
			b += rec(seq, 1)
			seq++
		}
		files[i] = b
	}
	s.write(t, files)
	return s
}

var crashRetention = func() backends.Retention { n := int64(9); return backends.Retention{MaxRecords: &n} }()

// crashAppend is the record the "writer" appends after the catch-up: it
// must survive every crash exactly once.
var crashAppend = rec(100, 1)

func crashRun(t *testing.T, s *rotSet, crashAt string) error {
	fsx.SetCrashHook(func(point string) error {
		if point == "caught-up" {
			f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return err
			}
			f.WriteString(crashAppend)
			f.Close()
		}
		if point == crashAt {
			return errors.New("killed at " + point)
		}
		return nil
	})
	defer func() { fsx.SetCrashHook(nil) }()
	_, err := s.backend(t).Compact(context.Background(), backends.CompactOptions{Retention: crashRetention})
	return err
}

func (s *rotSet) assertClean(t *testing.T) {
	t.Helper()
	for name := range s.layout(t) {
		if strings.HasPrefix(name, ".") {
			t.Errorf("leftover %s", name)
		}
	}
	s.noStateLeft(t)
}

func TestRotatingCrashAtEveryPoint(t *testing.T) {
	// The points a compaction passes, recorded from an uninterrupted run.
	ref := crashFixture(t)
	oldLayout := ref.layout(t)
	oldLayout["papyra.log"] += crashAppend
	var points []string
	fsx.SetCrashHook(func(p string) error {
		points = append(points, p)
		if p == "caught-up" {
			f, _ := os.OpenFile(ref.path, os.O_WRONLY|os.O_APPEND, 0)
			f.WriteString(crashAppend)
			f.Close()
		}
		return nil
	})
	if _, err := ref.backend(t).Compact(context.Background(), backends.CompactOptions{Retention: crashRetention}); err != nil {
		t.Fatal(err)
	}
	fsx.SetCrashHook(nil)
	newLayout := ref.layout(t)
	if len(points) < 8 {
		t.Fatalf("too few crash points: %v", points)
	}
	if strings.Count(ref.content(t), "\n") != 10 || !strings.HasSuffix(ref.content(t), crashAppend) {
		t.Fatalf("reference run lost the appended record: %q", ref.content(t))
	}
	committedAt, appendedAt := -1, -1
	for i, p := range points {
		switch p {
		case "commit-journal":
			committedAt = i
		case "caught-up":
			appendedAt = i
		}
	}
	untouched := ref.layout(t) // placeholder for the fixture without the append
	_ = untouched
	for i, p := range points {
		t.Run(p, func(t *testing.T) {
			s := crashFixture(t)
			err := crashRun(t, s, p)
			if !errors.Is(err, fsx.ErrSimulatedCrash) {
				t.Fatalf("no simulated crash: %v", err)
			}
			// Recovery, itself crashed at each of its points in turn
			// (recovery must be idempotent), then run to the end.
			var rpoints []string
			for k := 0; ; k++ {
				seen := 0
				fsx.SetCrashHook(func(rp string) error {
					if !strings.HasPrefix(rp, "recover:") {
						return nil
					}
					seen++
					if seen == k+1 && k < 20 {
						rpoints = append(rpoints, rp)
						return errors.New("killed in recovery at " + rp)
					}
					return nil
				})
				err := s.backend(t).Recover(context.Background())
				fsx.SetCrashHook(nil)
				if err == nil {
					break
				}
				if !errors.Is(err, fsx.ErrSimulatedCrash) {
					t.Fatalf("recover: %v", err)
				}
			}
			want := oldLayout
			if i < appendedAt {
				want = crashFixture(t).layout(t)
			}
			if i >= committedAt {
				want = newLayout
			}
			sameLayout(t, s.layout(t), want)
			s.assertClean(t)
			if t.Failed() {
				t.Logf("recovery crashed at %v", rpoints)
			}
		})
	}
}

func TestRotatingScan(t *testing.T) {
	s := newRotSet(t, 300, 3)
	s.write(t, map[int]string{
		0: rec(5, 1) + `{"kind":"event"}` + "\n" + `{"kind":"odd","timestamp":1}` + "\n",
		1: rec(1, 1) + "\n" + "garbage\n" + `{"kind":"event","timestamp":2`,
		4: rec(0, 1),
	})
	os.Mkdir(filepath.Join(s.dir, ".papyra.log.watcher-rot-abc"), 0o700)
	os.WriteFile(filepath.Join(s.dir, ".papyra.log.watcher-tmp-abc"), nil, 0o644)
	os.WriteFile(filepath.Join(s.dir, "papyra.log.compact.tmp"), nil, 0o644)
	an, err := s.backend(t).Scan(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, a := range an {
		count[a.Type]++
		if a.Target != "t" || a.Path == "" || a.Detail == "" {
			t.Errorf("incomplete anomaly %+v", a)
		}
	}
	want := map[string]int{backends.AnomalyInvalidLine: 2, backends.AnomalyPartialLine: 1, backends.AnomalyMissingTimestamp: 1,
		backends.AnomalyUnknownKind: 1, backends.AnomalyOrphanFile: 1, backends.AnomalyLeftover: 3}
	if fmt.Sprint(count) != fmt.Sprint(want) {
		t.Errorf("anomalies %v, want %v\n%+v", count, want, an)
	}
	for _, a := range an {
		if a.Type == backends.AnomalyInvalidLine && a.Path == s.path+".1" && !strings.Contains(a.Detail, "line 2") && !strings.Contains(a.Detail, "line 3") {
			t.Errorf("invalid line detail without line number: %+v", a)
		}
	}
	// The cap per type.
	s2 := newRotSet(t, 300, 2)
	s2.write(t, map[int]string{0: strings.Repeat("bad\n", ndjson.MaxAnomaliesPerType+7)})
	an, err = s2.backend(t).Scan(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(an) != ndjson.MaxAnomaliesPerType+1 || !strings.Contains(an[len(an)-1].Detail, "7 more") {
		t.Errorf("cap: %d anomalies, last %+v", len(an), an[len(an)-1])
	}
}

func TestRotatingRecoverRemovesLeftovers(t *testing.T) {
	s := newRotSet(t, 300, 3)
	s.write(t, map[int]string{0: rec(1, 1)})
	stg := filepath.Join(s.dir, ".papyra.log.watcher-rot-0123")
	os.Mkdir(stg, 0o700)
	os.WriteFile(filepath.Join(stg, "x"), []byte("y"), 0o644)
	os.WriteFile(filepath.Join(s.dir, ".papyra.log.watcher-tmp-0123"), nil, 0o644)
	if err := s.backend(t).Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	sameLayout(t, s.layout(t), map[string]string{"papyra.log": rec(1, 1)})
}

func TestRotatingLongLines(t *testing.T) {
	old := ndjson.BlockSize
	ndjson.BlockSize = 64
	defer func() { ndjson.BlockSize = old }()
	s := newRotSet(t, 1000, 3)
	long := fmt.Sprintf(`{"kind":"event","timestamp":1,"x":"%s"}`+"\n", strings.Repeat("y", 5000))
	s.write(t, map[int]string{0: rec(2, 1), 1: long + rec(1, 1), 2: rec(0, 1)})
	if _, err := s.backend(t).Compact(context.Background(), backends.CompactOptions{}); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"papyra.log.2": rec(0, 1), "papyra.log.1": long, "papyra.log": rec(1, 1) + rec(2, 1)}
	sameLayout(t, s.layout(t), want)
}

// Keep sort and bytes imported for helpers above.
var _ = sort.Strings
var _ = bytes.Equal
