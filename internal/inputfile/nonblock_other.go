//go:build !unix

package inputfile

// nonBlock is not needed where there are no named pipes in the file system;
// the stat before opening refuses anything else that is not a file.
const nonBlock = 0
