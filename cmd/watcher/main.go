// Command watcher is the Papyra reactive compactor: it compacts Papyra's
// persistence (NDJSON files, rotating file sets, Redis Streams) the moment it
// is needed, from outside the Papyra process, while Papyra keeps writing.
//
// Usage:
//
//	watcher run      --config FILE
//	watcher compact  --config FILE [--target NAME]... [--dry-run] [--json] [--now UNIX]
//	watcher validate --config FILE
//	watcher status   [--addr HOST:PORT] [--json]
//	watcher request  pre-backup|pre-migration|compact [--target NAME]... [--nats URL] [--timeout D] [--expect N]
//	watcher version
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit statuses (INTERFACE.md).
const (
	exitOK        = 0
	exitFailure   = 1
	exitBadConfig = 2
)

// command is one subcommand: it parses its own flags from args and returns
// the process exit status.
type command func(ctx context.Context, args []string, stdout, stderr io.Writer) int

var commands = map[string]command{
	"run":      runDaemon,
	"compact":  runCompact,
	"validate": runValidate,
	"status":   runStatus,
	"request":  runRequest,
	"version":  runVersion,
}

const usage = `watcher: the Papyra reactive compactor

Usage:
  watcher run      --config FILE       run the daemon (SIGHUP reloads, SIGTERM stops)
  watcher compact  --config FILE [--target NAME]... [--dry-run] [--json] [--now UNIX]
  watcher validate --config FILE       check a config file
  watcher status   [--addr HOST:PORT] [--json]
  watcher request  pre-backup|pre-migration|compact [--target NAME]... [--nats URL] [--timeout D] [--expect N]
  watcher version

Run 'watcher COMMAND -h' for a command's flags.
`

func main() {
	os.Exit(mainWith(os.Args[1:], os.Stdout, os.Stderr))
}

func mainWith(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return exitBadConfig
		}
		return exitOK
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "watcher: unknown command %q\n\n%s", args[0], usage)
		return exitBadConfig
	}
	// SIGINT/SIGTERM cancel the context; `run` installs its own handling
	// for SIGHUP.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return cmd(ctx, args[1:], stdout, stderr)
}
