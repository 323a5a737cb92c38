package main

import (
	"context"
	"fmt"
	"io"
)

const validateAbout = `Checks a config file as run and compact would load it (with the
environment overrides applied) and prints every problem, with its line and
key; then, for a valid file, its warnings. The file is --config FILE or the
one argument FILE (not both); default ./config.toml. Exit 0 when the file is
valid (warnings or not), 2 when it is not.
` + envUsage

func runValidate(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("validate", "watcher validate [--config FILE | FILE]", validateAbout, stderr)
	configPath := fs.String("config", "config.toml", "config file")
	// The file may come before or after the flags: parse again after it.
	var positional []string
	for {
		if code, ok := parseFlags(fs, args); !ok {
			return code
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(positional) > 1 {
		return strayArgument(fs, positional[1], stderr)
	}
	if len(positional) == 1 {
		if flagSet(fs, "config") {
			fmt.Fprintf(stderr, "watcher validate: both --config %s and the argument %s name a config file: give one\n", *configPath, positional[0])
			return exitBadConfig
		}
		*configPath = positional[0]
	}
	cfg, warnings, err := LoadConfig(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "invalid config: %v\n", err)
		return exitBadConfig
	}
	for _, w := range warnings {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	fmt.Fprintf(stdout, "%s: valid, %d target(s), %d warning(s)\n", cfg.Path, len(cfg.Targets), len(warnings))
	return exitOK
}
