package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/internal/buildinfo"
)

// newVersionCmd prints the build: release version (set with -ldflags "-X
// github.com/meshd/meshd/internal/buildinfo.version=v0.1.0", or recorded
// by go install module@version), commit and Go version. Also meshctl
// --version.
func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "print meshctl's version",
		Long:    "Print meshctl's version, the commit it was built from and the Go version.",
		Example: "  meshctl version\n  meshctl --version",
		Args:    noArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return printVersion(cmd.OutOrStdout()) },
	}
}

func printVersion(w io.Writer) error {
	_, err := fmt.Fprintln(w, buildinfo.Read().String("meshctl"))
	return err
}
