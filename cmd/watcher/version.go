package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// version and revision are stamped at build time:
//
//	go build -ldflags "-X main.version=v1.2.3 -X main.revision=$(git rev-parse HEAD)" ./cmd/watcher
//
// When they are empty, buildVersion falls back to what the Go toolchain
// recorded in the binary: the module version (set by `go install
// …@v1.2.3`) and the VCS revision (set by `go build` in a git checkout).
var (
	version  = ""
	revision = ""
)

// readBuildInfo is debug.ReadBuildInfo (tests replace it).
var readBuildInfo = debug.ReadBuildInfo

// buildVersion returns the version and revision of this binary, for
// `watcher version`, the papyra_compactor_info metric, /status and the
// start-up log line. version is "dev" and revision "unknown" when neither
// the linker nor the toolchain recorded them; a revision built from a
// modified work tree ends in "+dirty".
func buildVersion() (ver, rev string) {
	ver, rev = version, revision
	bi, ok := readBuildInfo()
	if ver == "" && ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		ver = bi.Main.Version
	}
	if rev == "" && ok {
		modified := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if rev != "" && modified {
			rev += "+dirty"
		}
	}
	if ver == "" {
		ver = "dev"
	}
	if rev == "" {
		rev = "unknown"
	}
	return ver, rev
}

// buildTime is the commit time the toolchain recorded, or "".
func buildTime() string {
	if bi, ok := readBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.time" {
				return s.Value
			}
		}
	}
	return ""
}

// versionLine is what `watcher version` and `watcher --version` print.
func versionLine() string {
	ver, rev := buildVersion()
	s := fmt.Sprintf("watcher %s (commit %s", ver, rev)
	if t := buildTime(); t != "" {
		s += ", " + t
	}
	return s + fmt.Sprintf(", %s %s/%s)", runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func runVersion(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("version", "watcher version", "Prints the version, the commit it was built from, the Go version and the platform.", stderr)
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return strayArgument(fs, fs.Arg(0), stderr)
	}
	fmt.Fprintln(stdout, versionLine())
	return exitOK
}
