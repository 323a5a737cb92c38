package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = "dev"

func runVersion(_ context.Context, _ []string, stdout, _ io.Writer) int {
	rev, modified, built := "unknown", false, ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			case "vcs.time":
				built = s.Value
			}
		}
	}
	if modified {
		rev += "+dirty"
	}
	fmt.Fprintf(stdout, "watcher %s (commit %s", version, rev)
	if built != "" {
		fmt.Fprintf(stdout, ", %s", built)
	}
	fmt.Fprintf(stdout, ", %s %s/%s)\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return exitOK
}
