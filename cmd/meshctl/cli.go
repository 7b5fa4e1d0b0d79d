package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"

	"github.com/meshd/meshd/internal/adminclient"
	"github.com/meshd/meshd/internal/suggest"
)

// Exit codes (documented in meshctl --help and docs/configuration.md).
const (
	exitOK          = 0
	exitError       = 1 // the command ran and failed, or found problems
	exitUsage       = 2 // the command line was wrong
	exitUnreachable = 3 // meshd's admin API could not be reached
	exitRefused     = 4 // meshd refused the request's credentials
)

// usageError is a command-line mistake: exit status 2, with a pointer to
// --help.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// exitStatus ends a command with a status and no further message: what it
// had to say (failed checks, analysis findings, help after a missing
// subcommand) it has printed.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func exitCodeOf(err error) int {
	var st exitStatus
	var ue *usageError
	switch {
	case errors.As(err, &st):
		return int(st)
	case errors.As(err, &ue):
		return exitUsage
	case adminclient.IsUnreachable(err):
		return exitUnreachable
	case adminclient.IsRefused(err):
		return exitRefused
	}
	return exitError
}

func errorMessage(err error) string {
	var st exitStatus
	if errors.As(err, &st) {
		return ""
	}
	return err.Error()
}

func isSilent(err error) bool {
	var st exitStatus
	return errors.As(err, &st)
}

// groupRun is the root's and every command group's RunE: without a
// subcommand it prints the group's help on standard error (exit 2); with an
// unknown one it says so, with a did-you-mean.
func groupRun(cmd *cobra.Command, args []string) error {
	if v, err := cmd.Flags().GetBool("version"); err == nil && v {
		return printVersion(cmd.OutOrStdout())
	}
	if len(args) == 0 {
		cmd.SetOut(cmd.ErrOrStderr())
		_ = cmd.Help()
		return exitStatus(exitUsage)
	}
	return unknownCommand(cmd, args[0])
}

func unknownCommand(cmd *cobra.Command, name string) error {
	var names []string
	for _, c := range cmd.Commands() {
		if c.IsAvailableCommand() || c.Name() == "help" {
			names = append(names, c.Name())
			names = append(names, c.Aliases...)
		}
	}
	msg := fmt.Sprintf("unknown command %q", name)
	if s := suggest.Closest(name, names); s != "" {
		msg += fmt.Sprintf("; did you mean %q?", s)
	} else {
		msg += "; commands: " + strings.Join(names, ", ")
	}
	return usageErrorf("%s", msg)
}

// group makes a command that only holds subcommands.
func group(use, short, long string, subs ...*cobra.Command) *cobra.Command {
	c := &cobra.Command{Use: use, Short: short, Long: long, Args: cobra.ArbitraryArgs, RunE: groupRun}
	c.AddCommand(subs...)
	return c
}

// newHelpCmd replaces cobra's help command, which prints the root's help
// and exits 0 for a topic it does not know.
func newHelpCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "help [command] [subcommand]",
		Short: "explain a command: meshctl help <command>",
		Long:  "Print a command's description, flags and examples (as meshctl <command> --help).",
		ValidArgsFunction: func(c *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
			target, _, err := c.Root().Find(args)
			if err != nil || target == nil {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			var out []cobra.Completion
			for _, s := range target.Commands() {
				if s.IsAvailableCommand() {
					out = append(out, cobra.CompletionWithDesc(s.Name(), s.Short))
				}
			}
			return out, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(c *cobra.Command, args []string) error {
			target, rest, err := c.Root().Find(args)
			if err != nil {
				return usageErrorf("%v", err)
			}
			if len(rest) > 0 {
				return unknownCommand(target, rest[0])
			}
			target.InitDefaultHelpFlag()
			return target.Help()
		},
	}
}

var shorthandErr = regexp.MustCompile(`^unknown shorthand flag: '.' in (-[^ ]+)`)

// flagError turns pflag's error into a usage error, with the flag the user
// probably meant: a misspelled --flag, or a Go-style single-dash -flag.
func flagError(cmd *cobra.Command, err error) error {
	msg := err.Error()
	var names []string
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if !f.Hidden {
			names = append(names, f.Name)
		}
	})
	if name, ok := strings.CutPrefix(msg, "unknown flag: --"); ok {
		if s := suggest.Closest(name, names); s != "" {
			msg += fmt.Sprintf("; did you mean --%s?", s)
		}
	} else if m := shorthandErr.FindStringSubmatch(msg); m != nil {
		word, _, _ := strings.Cut(strings.TrimPrefix(m[1], "-"), "=")
		if cmd.Flags().Lookup(word) != nil {
			msg = fmt.Sprintf("unknown flag -%s: long flags take two dashes, --%s", word, word)
		} else if s := suggest.Closest(word, names); s != "" {
			msg = fmt.Sprintf("unknown flag -%s; did you mean --%s?", word, s)
		}
	}
	return &usageError{msg: msg}
}

// Output formats.
const (
	formatTable = "table"
	formatJSON  = "json"
	formatYAML  = "yaml"
	formatText  = "text"
)

// outputFlag is -o/--output FORMAT: one of a command's formats, checked
// when parsed (with a did-you-mean) and completed by the shell.
type outputFlag struct {
	value   string
	allowed []string
}

func (o *outputFlag) String() string { return o.value }
func (o *outputFlag) Type() string   { return "format" }
func (o *outputFlag) Set(s string) error {
	if slices.Contains(o.allowed, s) {
		o.value = s
		return nil
	}
	msg := fmt.Sprintf("use %s", strings.Join(o.allowed, ", "))
	if c := suggest.Closest(s, o.allowed); c != "" {
		msg = fmt.Sprintf("did you mean %s? (%s)", c, msg)
	}
	return errors.New(msg)
}

// addOutputFlag gives cmd -o/--output with the formats allowed, the first
// being the default.
func addOutputFlag(cmd *cobra.Command, allowed ...string) *outputFlag {
	o := &outputFlag{value: allowed[0], allowed: allowed}
	cmd.Flags().VarP(o, "output", "o", "output `FORMAT`: "+strings.Join(allowed, ", "))
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(allowed, cobra.ShellCompDirectiveNoFileComp))
	return o
}

// print writes v as JSON or YAML, or calls table for the table (or text)
// format.
func (o *outputFlag) print(w io.Writer, v any, table func(w io.Writer) error) error {
	switch o.value {
	case formatJSON:
		return writeJSON(w, v)
	case formatYAML:
		b, err := yaml.Marshal(v)
		if err != nil {
			return fmt.Errorf("rendering YAML: %w", err)
		}
		_, err = w.Write(b)
		return err
	}
	return table(w)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table writes aligned columns: every table meshctl prints goes through it.
type table struct {
	tw *tabwriter.Writer
}

func newTable(w io.Writer, headers ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)}
	if len(headers) > 0 {
		t.row(toAny(headers)...)
	}
	return t
}

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

func (t *table) row(cells ...any) {
	for i, c := range cells {
		if i > 0 {
			fmt.Fprint(t.tw, "\t")
		}
		s := fmt.Sprint(c)
		if s == "" {
			s = "-"
		}
		fmt.Fprint(t.tw, s)
	}
	fmt.Fprintln(t.tw)
}

func (t *table) flush() error { return t.tw.Flush() }

// dataDirFlag registers --data-dir with meshd's default.
func dataDirFlag(fs *pflag.FlagSet, p *string, usage string) {
	fs.StringVar(p, "data-dir", defaultDataDir(), usage)
}

// withAdmin makes cmd one that asks a running meshd: it gets the flags that
// say how to reach meshd, and run gets a client for them.
func withAdmin(cmd *cobra.Command, run func(cmd *cobra.Command, c *adminclient.Client, args []string) error) *cobra.Command {
	o := &adminclient.Options{}
	o.AddFlags(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, err := o.Client()
		if err != nil {
			return usageErrorf("%v", err)
		}
		return run(cmd, c, args)
	}
	return cmd
}

// noArgs refuses positional arguments with a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf("unexpected argument %q: %s takes only flags", args[0], cmd.CommandPath())
	}
	return nil
}
