from llmqueue.cli import main

main()
