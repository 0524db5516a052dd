"""Development tooling, never shipped in the serving image: the live demo, the click replay that feeds
it and the benchmarks, and the embedded Tansu broker that tests and the demo run against."""
