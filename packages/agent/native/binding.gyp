{
  "targets": [
    {
      "target_name": "baton_sys",
      "sources": ["baton_sys.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror"]
    }
  ]
}
