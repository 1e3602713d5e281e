// The helpers' command-line options: `--name value` pairs in any order.
const args = process.argv.slice(2)

// The value after `--name`, or `fallback` when the option is not given.
export const option = (name, fallback) => {
  const at = args.indexOf(name)
  return at >= 0 ? args[at + 1] : fallback
}

// Every value given after `--name`, in order (an option that may repeat).
export const options = (name) =>
  args.flatMap((arg, at) => (arg === name && at + 1 < args.length ? [args[at + 1]] : []))

// Whether the bare flag `--name` is given.
export const flag = (name) => args.includes(name)
