# Tools for agents in fort VMs
export PATH="$PATH:/opt/tools/bin"
