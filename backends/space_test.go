package backends

import (
	"errors"
	"fmt"
	"testing"
)

func TestCopyFits(t *testing.T) {
	const mib = 1 << 20
	cases := []struct {
		need, free int64
		want       bool
	}{
		{0, mib, true},                  // the margin alone
		{0, mib - 1, false},             // less than the margin
		{10 * mib, 11 * mib, true},      // 1 MiB margin: 1 % is less
		{10 * mib, 11*mib - 1, false},   // one byte short
		{500 * mib, 505 * mib, true},    // 1 % margin: 5 MiB
		{500 * mib, 504 * mib, false},   // 1 MiB margin would do, 1 % does not
		{500 * mib, 100 * mib, false},   // far from it
		{500 * mib, 1000 * mib, true},   // plenty
		{200 * mib, 202 * mib, true},    // 1 % is 2 MiB
		{200 * mib, 202*mib - 1, false}, // ... one byte short
	}
	for _, c := range cases {
		if got := CopyFits(c.need, c.free); got != c.want {
			t.Errorf("CopyFits(%d, %d) = %v, want %v", c.need, c.free, got, c.want)
		}
		err := CheckCopySpace(c.need, c.free, "/data", MethodCopy)
		if (err == nil) != c.want {
			t.Errorf("CheckCopySpace(%d, %d) = %v, want fits=%v", c.need, c.free, err, c.want)
		}
	}
}

func TestNoSpaceError(t *testing.T) {
	err := fmt.Errorf("json target events: compact /data/events.ndjson: %w",
		CheckCopySpace(23<<20, 512<<10, "/data", MethodCopy))
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("%v does not match ErrNoSpace", err)
	}
	want := `json target events: compact /data/events.ndjson: a copy needs 24 MiB (23 MiB of survivors and a 1.0 MiB margin), 512 KiB are free on /data (method "copy" rewrites the survivors; "auto" compacts in place where the filesystem allows)`
	if err.Error() != want {
		t.Fatalf("error\n%s\nwant\n%s", err, want)
	}
	var nse *NoSpaceError
	if !errors.As(err, &nse) || nse.Need != 23<<20 || nse.Margin != 1<<20 || nse.Free != 512<<10 {
		t.Fatalf("NoSpaceError %+v", nse)
	}
	auto := CheckCopySpace(23<<20, 512<<10, "/data", MethodAuto).Error()
	if want := `(method "auto" copies where it cannot compact in place, as here)`; auto[len(auto)-len(want):] != want {
		t.Fatalf("auto's hint: %s", auto)
	}
	if errors.Is(errors.New("other"), ErrNoSpace) || errors.Is(ErrBusy, ErrNoSpace) {
		t.Fatal("ErrNoSpace matches what it is not")
	}
}
