package rotating

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/internal/testutil"
)

// TestRotatingCopyRefusedWithoutSpace: on a filesystem whose free space
// cannot hold the new chunks, a compaction is refused before it stages a
// byte (ErrNoSpace, an error that says what is needed and what is free),
// for either method: every file of the set keeps its inode, size and mtime,
// no staging directory, placeholder or journal is left. A dry run is not
// checked. With room for the chunks and the margin the same compaction
// succeeds.
func TestRotatingCopyRefusedWithoutSpace(t *testing.T) {
	mnt := testutil.MountTmpfs(t, 16)
	dir := filepath.Join(mnt, "set")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s := &rotSet{dir: dir, path: filepath.Join(dir, "papyra.log"), state: filepath.Join(mnt, "state"), maxBytes: 1 << 20, maxFiles: 8}
	// Six segments of 1,000 records of about 1 KiB, oldest at .5.
	pad := strings.Repeat("x", 900)
	files := map[int]string{}
	var all []string
	for f := 5; f >= 0; f-- {
		var b strings.Builder
		for range 1000 {
			line := fmt.Sprintf(`{"kind":"event","payload":{"n":%d,"pad":%q},"timestamp":%d}`+"\n", len(all), pad, 1795599000+len(all))
			all = append(all, line)
			b.WriteString(line)
		}
		files[f] = b.String()
	}
	s.write(t, files)
	// The cut falls inside .3: method auto would collapse its head in
	// place, which tmpfs cannot do, so it copies too.
	const keep = 3500
	need := int64(len(strings.Join(all[len(all)-keep:], "")))
	opts := backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(keep)}}
	filler := testutil.FillDisk(t, mnt, need/2)
	before := rotIDs(t, dir)
	content := s.content(t)

	for _, method := range []string{backends.MethodCopy, backends.MethodAuto} {
		b, err := New(Config{Name: "t", Path: s.path, MaxBytes: s.maxBytes, MaxFiles: s.maxFiles, StateDir: s.state, Method: method})
		if err != nil {
			t.Fatal(err)
		}
		free := testutil.Available(t, mnt)
		_, err = b.Compact(context.Background(), opts)
		if !errors.Is(err, backends.ErrNoSpace) {
			t.Fatalf("method %s: want ErrNoSpace with %d bytes free for %d of survivors, got %v", method, free, need, err)
		}
		msg := err.Error()
		for _, want := range []string{`rotating target "t": compact ` + s.path + ": a copy needs ", " are free on " + dir + " (method "} {
			if !strings.Contains(msg, want) {
				t.Errorf("method %s: the error %q does not say %q", method, msg, want)
			}
		}
		var nse *backends.NoSpaceError
		// The journal and the placeholder written before the check take a
		// page or two.
		if !errors.As(err, &nse) || nse.Need != need || nse.Free > free || nse.Free < free-64<<10 || nse.Method != method {
			t.Errorf("method %s: NoSpaceError %#v, want need %d, free %d", method, nse, need, free)
		}
		if after := rotIDs(t, dir); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Fatalf("method %s: a refused compaction changed the set's directory:\n%v\n%v", method, before, after)
		}
		if s.content(t) != content {
			t.Fatalf("method %s: the set's content changed", method)
		}
		s.noStateLeft(t)
		if got := testutil.Available(t, mnt); got != free {
			t.Errorf("method %s: %d bytes free after the refusal, %d before", method, got, free)
		}

		dry := opts
		dry.DryRun = true
		rep, err := b.Compact(context.Background(), dry)
		if err != nil || rep.AfterRecords != keep {
			t.Fatalf("method %s: dry run on a full disk: %+v, %v", method, rep, err)
		}
	}

	// Room for the chunks and the margin: the compaction runs.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	testutil.FillDisk(t, mnt, need+backends.CopyMargin(need)+256<<10)
	rep, err := s.backend(t).Compact(context.Background(), opts)
	if err != nil {
		t.Fatalf("with room for the copy: %v", err)
	}
	if got := s.content(t); got != strings.Join(all[len(all)-keep:], "") || rep.AfterRecords != keep {
		t.Fatalf("with room for the copy: %d bytes, report %+v; want the newest %d records", len(got), rep, keep)
	}
	s.assertClean(t)
}
