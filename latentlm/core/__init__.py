"""The bottom layer: errors, configs, the command line, workdirs, meshes
and the process-level reliability pieces; imports nothing else of latentlm."""
