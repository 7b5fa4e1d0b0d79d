//go:build !unix

package fdlimit

import "errors"

func raise() (uint64, uint64, error) {
	return 0, 0, errors.New("file descriptor limits are not known on this system")
}
