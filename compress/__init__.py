"""compress: staged compression and edge deployment for BERT/ALBERT text classifiers."""
