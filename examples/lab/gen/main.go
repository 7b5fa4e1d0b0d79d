// Command gen writes the generated files of examples/lab (the
// docker-compose file, the Consul service definitions and the mesh
// policies) from the lab's one description, examples/lab/lab.go.
//
//	go run ./examples/lab/gen            # from the repository root
//	go run ./examples/lab/gen -check     # exit 1 if a file is out of date
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/meshd/meshd/examples/lab"
)

func main() {
	dir := flag.String("dir", "examples/lab", "`directory` to write into (examples/lab of the repository)")
	check := flag.Bool("check", false, "write nothing; exit 1 and name every file that differs from what would be written")
	flag.Parse()
	files, err := lab.Files()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
	stale := 0
	for _, rel := range lab.Paths(files) {
		path := filepath.Join(*dir, rel)
		if *check {
			if old, err := os.ReadFile(path); err != nil || !bytes.Equal(old, files[rel]) {
				fmt.Fprintf(os.Stderr, "gen: %s is out of date: run go run ./examples/lab/gen\n", path)
				stale++
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "gen:", err)
			os.Exit(1)
		}
		if err := os.WriteFile(path, files[rel], 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "gen:", err)
			os.Exit(1)
		}
		fmt.Println("wrote", path)
	}
	if stale > 0 {
		os.Exit(1)
	}
}
